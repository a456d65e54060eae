"""Real photographs that ship with scikit-image: test data, benchmark data and the demo's real class."""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_CAPTIONS", "SAMPLE_PHOTOS", "sample_photos"]

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
# What each photograph shows, as a captioner would say it (and never whether an image of it is real).
SAMPLE_CAPTIONS = {
    "astronaut": "an astronaut in a white spacesuit in front of a flag",
    "coffee": "a cup of coffee on a saucer with a spoon",
    "chelsea": "a tabby cat looking to the side",
    "rocket": "a rocket standing on a launch pad",
    "immunohistochemistry": "a microscope image of stained tissue",
    "hubble_deep_field": "a telescope image of distant galaxies",
}


def sample_photos() -> dict[str, np.ndarray]:
    """scikit-image's colour sample photographs as RGB uint8 arrays, by name (no download)."""
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in SAMPLE_PHOTOS}
