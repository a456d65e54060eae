"""Image degradations that detectors meet in the wild: JPEG re-compression, blur, resizing and cropping.

One module serves both uses, so that what a detector is trained to withstand is what it is tested on:

- robustness sweeps (`dgs eval --perturb jpeg:95,75,50`): each `Perturbation` is applied at a fixed level to the
  decoded image, before the model's own preprocessing, deterministically per image of the data (`image_seed`);
- training augmentation (`dgs train --blur-prob 0.1 --jpeg-prob 0.1`): `Degradation` draws a blur and a JPEG
  re-compression at random, as the official DGS-Net code offers (off by default there and here).

Every function takes and returns an RGB uint8 image ``[H, W, 3]``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DgsError
from .limits import MAX_PIXELS

__all__ = [
    "KINDS",
    "PerturbationError",
    "Perturbation",
    "parse_perturbations",
    "image_seed",
    "jpeg",
    "blur",
    "resize",
    "crop",
    "Degradation",
]


class PerturbationError(DgsError, ValueError):
    """A perturbation that is unknown or out of range; the message says what is accepted."""


# kind -> (what the level is, lowest, highest, whether a higher level is harsher)
KINDS: dict[str, tuple[str, float, float, bool]] = {
    "jpeg": ("JPEG quality", 1, 100, False),
    "blur": ("Gaussian blur sigma (pixels)", 0.1, 20.0, True),
    "resize": ("scale factor", 0.05, 2.0, False),
    "crop": ("fraction of each side kept", 0.05, 1.0, False),
}
# Blur kernels span 3 sigma on each side, as OpenCV's own choice for 8-bit images does.
_BLUR_RADIUS_SIGMAS = 3


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Re-compress as a baseline JPEG of this quality (1-100; OpenCV's libjpeg, 4:2:0 chroma subsampling)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # libjpeg's YCbCr weights assume the channel order OpenCV writes
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise PerturbationError(f"JPEG encoding at quality {quality} failed on a {image.shape[1]}x{image.shape[0]} "
                                "image")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels, borders reflected; none at sigma 0."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(_BLUR_RADIUS_SIGMAS * sigma))
    return cv2.GaussianBlur(image, (2 * radius + 1, 2 * radius + 1), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT_101)


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    """Scale both sides by ``scale`` (at least 1 pixel): area averaging to shrink, as image services downscale,
    bicubic to enlarge.

    Raises:
        PerturbationError: the result would exceed `MAX_PIXELS`.
    """
    h, w = image.shape[:2]
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if new_w * new_h > MAX_PIXELS:
        raise PerturbationError(f"resizing a {w}x{h} image by {scale} would give {new_w}x{new_h} pixels, more than "
                                f"{MAX_PIXELS}")
    if (new_w, new_h) == (w, h):
        return image
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def crop(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A ``fraction`` of each side (at least 1 pixel), at a position drawn from ``rng``."""
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return image[top : top + ch, left : left + cw]


def image_seed(path: str | os.PathLike, data: str | os.PathLike) -> int:
    """The seed of an image of labelled data: it depends on the image's path relative to the data root (the
    folder, or a CSV manifest's folder) alone, so that the same image is perturbed the same way by every detector,
    run and machine, however the root is spelled (relative, absolute, through a link)."""
    root = os.fspath(data)
    root = root if os.path.isdir(root) else os.path.dirname(os.path.abspath(root))
    key = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "little")


@dataclass(frozen=True)
class Perturbation:
    """One degradation at one level.

    Attributes:
        kind: ``jpeg`` (level: quality 1-100), ``blur`` (Gaussian sigma in pixels), ``resize`` (scale factor) or
            ``crop`` (fraction of each side kept, at a random position).
        level: the level, in the unit of ``kind`` (see `KINDS` for the ranges).
    """

    kind: str
    level: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PerturbationError(f"perturbation {self.kind!r} is unknown (expected one of {', '.join(KINDS)})")
        what, low, high, _ = KINDS[self.kind]
        level = self.level
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
            raise PerturbationError(f"{self.kind} level must be a number, got {level!r}")
        if self.kind == "jpeg" and level != math.floor(level):
            raise PerturbationError(f"jpeg level is a JPEG quality, an integer from 1 to 100; got {level}")
        if not low <= level <= high:
            raise PerturbationError(f"{self.kind} level is the {what}, from {low:g} to {high:g}; got {level:g}")

    @property
    def label(self) -> str:
        """The level as written on the command line (``75``, ``0.5``)."""
        return f"{self.level:g}"

    @property
    def description(self) -> str:
        """What a reader of a table needs: ``JPEG quality 75``, ``blur sigma 2 px``, ``resize x0.5``, ``crop 80%``."""
        return {
            "jpeg": f"JPEG quality {self.label}",
            "blur": f"blur sigma {self.label} px",
            "resize": f"resize x{self.label}",
            "crop": f"crop {100 * self.level:g}%",
        }[self.kind]

    def apply(self, image: np.ndarray, seed: int = 0) -> np.ndarray:
        """The perturbed image; ``seed`` places the crop (the other kinds draw nothing)."""
        if self.kind == "jpeg":
            return jpeg(image, int(self.level))
        if self.kind == "blur":
            return blur(image, self.level)
        if self.kind == "resize":
            return resize(image, self.level)
        return crop(image, self.level, np.random.default_rng(seed))


def parse_perturbations(text: str) -> list[Perturbation]:
    """``kind:level,level,...`` (``jpeg:95,75,50``) as one `Perturbation` per level, in the order written.

    Raises:
        PerturbationError: an unknown kind, a missing or repeated level, or a level out of range.
    """
    kind, sep, levels = text.partition(":")
    kind = kind.strip().lower()
    if not sep or not levels.strip():
        raise PerturbationError(f"--perturb {text!r}: expected KIND:LEVEL[,LEVEL...], e.g. jpeg:95,75,50 "
                                f"(kinds: {', '.join(KINDS)})")
    result = []
    for item in levels.split(","):
        try:
            level = float(item)
        except ValueError:
            raise PerturbationError(f"--perturb {text!r}: level {item.strip()!r} is not a number") from None
        whole = kind == "jpeg" and math.isfinite(level) and level == int(level)
        perturbation = Perturbation(kind, int(level) if whole else level)
        if perturbation in result:
            raise PerturbationError(f"--perturb {text!r}: level {perturbation.label} is given twice")
        result.append(perturbation)
    return result


def _range(values: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    if not 1 <= len(values) <= 2:
        raise PerturbationError(f"{name} takes one value or two (a range min,max), got {list(values)}")
    lo, hi = min(values), max(values)
    if not (low <= lo and hi <= high):
        raise PerturbationError(f"{name} must be from {low:g} to {high:g}, got {list(values)}")
    return lo, hi


@dataclass(frozen=True)
class Degradation:
    """Training augmentation, as DGS-Net's code offers it (off by default there too: probabilities 0, sigma 0.5,
    quality 75).

    With probability ``blur_prob`` a Gaussian blur of sigma drawn uniformly from ``blur_sigma`` (one value, or a
    range min,max; sigma 0 leaves the image as it is), then with probability ``jpeg_prob`` a JPEG re-compression
    at a quality drawn uniformly from the integers of ``jpeg_quality`` (one value, or a range min,max).
    """

    blur_prob: float = 0.0
    blur_sigma: tuple[float, ...] = (0.5,)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, ...] = (75,)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PerturbationError(f"{name} must be a probability from 0 to 1, got {getattr(self, name)}")
        _range(self.blur_sigma, "blur_sigma", 0.0, KINDS["blur"][2])
        _range(self.jpeg_quality, "jpeg_quality", *KINDS["jpeg"][1:3])
        if any(q != int(q) for q in self.jpeg_quality):
            raise PerturbationError(f"jpeg_quality takes integers, got {list(self.jpeg_quality)}")

    @property
    def active(self) -> bool:
        return self.blur_prob > 0 or self.jpeg_prob > 0

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The image, degraded or not as drawn from ``rng``."""
        if self.blur_prob > 0 and rng.random() < self.blur_prob:
            image = blur(image, rng.uniform(min(self.blur_sigma), max(self.blur_sigma)))
        if self.jpeg_prob > 0 and rng.random() < self.jpeg_prob:
            image = jpeg(image, int(rng.integers(min(self.jpeg_quality), max(self.jpeg_quality) + 1)))
        return image
