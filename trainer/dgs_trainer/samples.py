"""Real photographs that ship with scikit-image: test data, benchmark data and the demo's real class."""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_PHOTOS", "sample_photos"]

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-image's colour sample photographs as RGB uint8 arrays, by name (no download)."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in SAMPLE_PHOTOS}
