"""Real photographs that ship with scikit-image: test data, benchmark data and the demo's real class."""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_CAPTIONS", "SAMPLE_PHOTOS", "photo_crops", "sample_photos"]

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


def photo_crops(images: list[np.ndarray], count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` square crops of ``images`` (taken in turn) at random places and scales, from a third of the
    shorter side to all of it: more distinct images than the photographs themselves."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = images[i % len(images)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(np.ascontiguousarray(photo[top : top + side, left : left + side]))
    return out
