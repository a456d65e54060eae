"""The one definition of preprocessing, shared by training, calibration, evaluation and deployment.

Detectors of generated images key on low-level artefacts, so every path that feeds a model (the trainer's
data loaders, export calibration, `dgs eval`, `Detector`, the C++ core) runs these functions with the spec
stored in the model package. Two transforms exist:

- ``clip``: shortest side resized to ``size`` (bicubic), centre crop ``size`` x ``size``, CLIP mean/std.
- ``patch-select`` (DGS-Net's input): the image is cut into ``patch_size`` patches; the lowest- and highest-
  spectral-entropy patches are stitched into a ``grid`` x ``grid`` mosaic, ImageNet mean/std. An image with
  fewer patches than the mosaic has tiles is either resized first (``small_images="resize"``) or used as it is,
  its patches repeated and the rest of the mosaic black (``"pad"``, as DGS-Net's own code does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from . import native
from .errors import ImageTooLarge, ImageTooSmall
from .limits import MAX_INPUT_SIZE, MAX_PIXELS

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessSpec",
    "resize_shortest_side",
    "center_crop",
    "spectral_entropy",
    "PatchSelection",
    "patch_selection",
    "select_patches",
    "crop_image",
    "normalize",
    "preprocess",
    "preprocess_batch",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])
ENTROPY_DECIMALS = 6
MIN_INPUT_SIZE = 16
# Smaller patches give nothing to a spectrum and millions of entropies to rank on a large image.
MIN_PATCH_SIZE = 8
# A smaller std would multiply pixel values by over 255,000: no real normalisation does that.
MIN_STD = 1e-3
TRANSFORMS = ("clip", "patch-select")
# What patch-select does with an image that has fewer patches than the mosaic has tiles.
SMALL_IMAGE_POLICIES = ("resize", "pad")
# Patches per FFT call. Bands of about this many patches keep the grey values, spectra and entropy terms in
# the CPU cache: 2-3x faster than one call over a whole 1024x1024 image, and memory stays flat on huge ones.
_PATCHES_PER_BAND = 64


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _triple(values: Any, name: str, low: float, high: float) -> tuple[float, float, float]:
    """Three finite real numbers in [low, high] (per-channel RGB statistics), as floats."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray) or len(values) != 3:
        raise ValueError(f"preprocess {name} must be a list of 3 numbers, got {values!r}")
    for value in values:
        real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        if not real or not (low <= value <= high and math.isfinite(value)):  # huge ints compare, never convert
            raise ValueError(f"preprocess {name} must be 3 finite numbers from {low} to {high}, got {list(values)}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a model input; stored in every model package manifest.

    Attributes:
        transform: ``"clip"`` or ``"patch-select"``.
        size: side of the square model input in pixels, 16 to `MAX_INPUT_SIZE`.
        mean: per-channel RGB mean, on the 0..1 scale (each in [0, 1]).
        std: per-channel RGB standard deviation, on the 0..1 scale (each in [0.001, 1]).
        patch_size: side of a patch (``patch-select`` only, at least 8); ``size`` must be a multiple of it.
        interpolation: resampling used when resizing; only ``"bicubic"`` is defined.
        small_images: ``patch-select`` only: what an image with fewer than ``grid**2`` patches gets.
            ``"resize"``: resized so its shorter side is ``size`` first (the default, which packages written
            before this field existed use); ``"pad"``: DGS-Net's own rule, no resizing, patches repeated and
            black tiles (see `select_patches`).
    """

    transform: str = "clip"
    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    patch_size: int = 32
    interpolation: str = "bicubic"
    small_images: str = "resize"

    def __post_init__(self) -> None:
        # Types are exact (a manifest saying size "224" or std [0, 0, 0] is damaged, not to be guessed at) and
        # values bounded: the spec comes from model packages, which are untrusted input.
        object.__setattr__(self, "mean", _triple(self.mean, "mean", 0.0, 1.0))
        object.__setattr__(self, "std", _triple(self.std, "std", MIN_STD, 1.0))
        if not isinstance(self.transform, str) or self.transform not in TRANSFORMS:
            raise ValueError(f"preprocess transform {self.transform!r} is unknown (expected one of {TRANSFORMS})")
        if not _is_int(self.size) or not MIN_INPUT_SIZE <= self.size <= MAX_INPUT_SIZE:
            raise ValueError(
                f"preprocess size must be an integer from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, got {self.size!r}"
            )
        if not _is_int(self.patch_size) or self.patch_size < MIN_PATCH_SIZE:
            raise ValueError(
                f"preprocess patch_size must be an integer of at least {MIN_PATCH_SIZE}, got {self.patch_size!r}"
            )
        if self.interpolation != "bicubic":
            raise ValueError(f"preprocess interpolation {self.interpolation!r} is unknown (expected 'bicubic')")
        if self.transform == "patch-select" and self.size % self.patch_size:
            raise ValueError(f"patch-select size {self.size} is not a multiple of patch_size {self.patch_size}")
        if not isinstance(self.small_images, str) or self.small_images not in SMALL_IMAGE_POLICIES:
            raise ValueError(
                f"preprocess small_images {self.small_images!r:.60} is unknown (expected one of {SMALL_IMAGE_POLICIES})"
            )
        if self.transform != "patch-select" and self.small_images != "resize":
            raise ValueError(f"preprocess small_images {self.small_images!r} applies to patch-select only, not to "
                             f"{self.transform}")

    @classmethod
    def clip(cls, size: int = 224) -> PreprocessSpec:
        """CLIP's own preprocessing at the given input size."""
        return cls(transform="clip", size=size, mean=CLIP_MEAN, std=CLIP_STD)

    @classmethod
    def patch_select(cls, size: int = 224, patch_size: int = 32, small_images: str = "resize") -> PreprocessSpec:
        """DGS-Net's patch selection: a 7x7 mosaic of 32x32 patches at the defaults.

        Args:
            size: side of the mosaic.
            patch_size: side of a patch.
            small_images: ``"resize"`` or ``"pad"`` (DGS-Net's own handling of images under ``size``).
        """
        return cls(transform="patch-select", size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, patch_size=patch_size,
                   small_images=small_images)

    @property
    def grid(self) -> int:
        """Patches per side of the ``patch-select`` mosaic."""
        return self.size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.transform != "patch-select":
            d.pop("patch_size")
            d.pop("small_images")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Build a spec from a manifest's ``preprocess`` entry; unknown keys are an error, not ignored.

        A missing ``small_images`` means ``"resize"``: the only behaviour before the field existed.
        """
        known = {"transform", "size", "mean", "std", "patch_size", "interpolation", "small_images"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"preprocess spec has unknown keys {sorted(unknown)} (known: {sorted(known)})")
        if "transform" not in d:
            raise ValueError("preprocess spec has no 'transform'")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in d.items()})


def resize_shortest_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size``, bicubic; the longer side is truncated as torchvision does.

    Raises:
        ImageTooLarge: the resized image would exceed `MAX_PIXELS` (a very thin image, such as 1 x 60000).
    """
    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    if new_h * new_w > MAX_PIXELS:
        raise ImageTooLarge(
            f"a {w}x{h} image is too elongated: resizing its short side to {size} would give {new_w}x{new_h} pixels"
        )
    if (new_h, new_w) == (h, w):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Crop the centre ``size`` x ``size``, with torchvision's rounding of the offsets."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {w}x{h} image")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top : top + size, left : left + size]


def spectral_entropy(patches: np.ndarray) -> np.ndarray:
    """Spectral entropy (bits) of each greyscale patch in ``[N, P, P]`` (values 0..1) in one FFT call.

    The power spectrum |FFT2|^2 is normalised to sum 1 and its entropy is -sum p*log2(p), with 1e-12 guards.
    The spectrum of a real patch is conjugate-symmetric, so the half spectrum of ``rfft2`` is used with each
    column weighted by how many columns of the full spectrum it stands for (half the FFT and log work).
    """
    import scipy.fft  # only patch-select needs it; kept off the SDK's import path

    p = patches.shape[-1]
    spectrum = scipy.fft.rfft2(patches)  # [N, P, P // 2 + 1]; scipy's pocketfft: same values, a third faster
    power = spectrum.real**2
    power += spectrum.imag**2
    weights = np.full(spectrum.shape[-1], 2.0)
    weights[0] = 1.0
    if p % 2 == 0:
        weights[-1] = 1.0  # the Nyquist column is its own mirror
    total = np.einsum("nij,j->n", power, weights) + 1e-12  # [N]
    # With p = power / total and sum(power) = total - eps:
    #   sum p*ln(p + eps) = sum power*ln(power + eps*total) / total - ln(total) * (1 - eps/total),
    # which spares a division over every spectrum bin; natural logs (twice as fast as log2) become bits at the end.
    terms = np.log(power + (1e-12 * total)[:, None, None])
    terms *= power
    nats = np.log(total) * (1.0 - 1e-12 / total) - np.einsum("nij,j->n", terms, weights) / total
    return nats / np.log(2.0)


def _gray(image: np.ndarray) -> np.ndarray:
    """Grey values in 0..1, float64: 0.299 R + 0.587 G + 0.114 B, divided by 255."""
    return cv2.transform(image.astype(np.float64), GRAY_WEIGHTS[None] / 255.0)


def _patch_grid(image: np.ndarray, patch: int) -> np.ndarray:
    """Cut the top-left multiple-of-``patch`` region into patches in row-major order: ``[N, P, P, ...]``."""
    gh, gw = image.shape[0] // patch, image.shape[1] // patch
    region = image[: gh * patch, : gw * patch]
    tail = region.shape[2:]
    return region.reshape(gh, patch, gw, patch, *tail).swapaxes(1, 2).reshape(gh * gw, patch, patch, *tail)


def _patch_entropies(image: np.ndarray, p: int) -> np.ndarray:
    """Spectral entropies of the row-major patches of the top-left multiple-of-``p`` region: ``[N]`` float64.

    The native core computes them when it is in use (see `dgs_sdk.native`); the two agree to about 1e-13 bits,
    far below the rounding to `ENTROPY_DECIMALS` that the ranking applies.
    """
    core = native.module()
    if core is not None and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return core.patch_entropies(np.ascontiguousarray(image), p)
    gh, gw = image.shape[0] // p, image.shape[1] // p
    region = image[: gh * p, : gw * p]
    rows = max(1, _PATCHES_PER_BAND // gw)  # patch rows per band
    return np.concatenate([
        spectral_entropy(_patch_grid(_gray(region[r * p : (r + rows) * p]), p))
        for r in range(0, gh, rows)
    ])


@dataclass(frozen=True)
class PatchSelection:
    """Which patches `select_patches` puts into the mosaic, and the image they are cut from.

    Attributes:
        image: the RGB uint8 image the patches are cut from: the input itself, or the input resized so its shorter
            side is ``size`` when ``resized``.
        resized: the input had fewer patches than the mosaic has tiles and ``small_images="resize"`` resized it.
        patch_size: side of a patch in pixels.
        grid: tiles per side of the mosaic.
        rows: patches per column of ``image`` (its height // ``patch_size``).
        columns: patches per row of ``image`` (its width // ``patch_size``).
        indices: ``[K]`` row-major numbers of the selected patches, in mosaic order (slot k holds patch
            ``indices[k]``); K is ``grid**2`` except with ``"pad"``, whose slots from K on are black.
        low: ``[K]`` bool: True where the slot holds one of the lowest-entropy picks, False for the highest. With
            ``"pad"`` a patch can be picked as both, and then fills two slots.
        entropy: ``[K]`` spectral entropy (bits) of each selected patch.
    """

    image: np.ndarray
    resized: bool
    patch_size: int
    grid: int
    rows: int
    columns: int
    indices: np.ndarray
    low: np.ndarray
    entropy: np.ndarray

    @property
    def corners(self) -> np.ndarray:
        """``[K, 2]`` int64: the (top, left) pixel of each selected patch in ``image``, in mosaic order."""
        return np.stack([self.indices // self.columns, self.indices % self.columns], axis=1) * self.patch_size

    def mosaic(self) -> np.ndarray:
        """The ``[grid * P, grid * P, 3]`` uint8 mosaic: selected patches row-major by slot, then black tiles."""
        p, grid, rows, cols = self.patch_size, self.grid, self.rows, self.columns
        region = self.image[: rows * p, : cols * p]
        tiles = region.reshape(rows, p, cols, p, 3)[self.indices // cols, :, self.indices % cols]  # [K, P, P, 3]
        if len(self.indices) < grid * grid:  # "pad": the remaining tiles are black
            tiles = np.concatenate([tiles, np.zeros((grid * grid - len(self.indices), p, p, 3), np.uint8)])
        mosaic = tiles.reshape(grid, grid, p, p, 3).swapaxes(1, 2)
        return mosaic.reshape(grid * p, grid * p, 3)


def patch_selection(image: np.ndarray, spec: PreprocessSpec, rng: np.random.Generator | None = None) -> PatchSelection:
    """The patches DGS-Net's patch selection keeps from an RGB uint8 image (see `select_patches`, which is
    ``patch_selection(image, spec, rng).mosaic()``).

    Raises:
        ImageTooSmall: with ``"pad"``, an image under one patch in height or width.
    """
    p, grid = spec.patch_size, spec.grid
    n_keep = grid * grid
    n_patches = (image.shape[0] // p) * (image.shape[1] // p)
    resized = False
    if n_patches < n_keep:
        if spec.small_images == "resize":
            image, resized = resize_shortest_side(image, spec.size), True
        elif n_patches == 0:
            h, w = image.shape[:2]
            raise ImageTooSmall(f"a {w}x{h} image is smaller than one {p}x{p} patch")
    gh, gw = image.shape[0] // p, image.shape[1] // p
    entropy = _patch_entropies(image, p)
    # Rounded to a micro-bit before ranking: flat patches differ only by rounding noise (~1e-12), which would
    # otherwise decide their order differently in every implementation. Ties then go by position.
    order = np.argsort(np.round(entropy, ENTROPY_DECIMALS), kind="stable")
    n = len(order)
    n_low, n_high = min(n_keep // 2, n), min(n_keep - n_keep // 2, n)
    # With N < grid**2 the two ends overlap (DGS-Net's order[:24] and order[-25:]): patches may be repeated.
    chosen = np.concatenate([order[:n_low], order[n - n_high :]])
    low = np.arange(len(chosen)) < n_low
    if rng is not None:
        # Shuffling the slot numbers draws from rng exactly as shuffling `chosen` itself would.
        slots = rng.permutation(len(chosen))
        chosen, low = chosen[slots], low[slots]
    return PatchSelection(image=image, resized=resized, patch_size=p, grid=grid, rows=gh, columns=gw, indices=chosen,
                          low=low, entropy=entropy[chosen])


def select_patches(image: np.ndarray, spec: PreprocessSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """DGS-Net's patch selection of an RGB uint8 image into a ``[size, size, 3]`` uint8 mosaic.

    Height and width are cropped down to multiples of ``patch_size`` (top-left region kept) and cut into N
    patches, numbered row-major. Entropies are compared rounded to 6 decimals and ties are broken by position;
    the ``grid**2 // 2`` lowest-entropy and the ``grid**2 - grid**2 // 2`` highest-entropy patches are kept.
    Mosaic order is ascending entropy (row-major), or, when ``rng`` is given (training), a permutation of the
    selected tiles drawn from it. `patch_selection` says which patches these are and where they lie.

    An image with N < ``grid**2`` patches follows ``spec.small_images``:

    - ``"resize"``: the image is first resized so its shorter side is ``size`` (bicubic), which guarantees enough.
    - ``"pad"``: DGS-Net's own rule, without resizing. The lowest min(``grid**2 // 2``, N) and the highest
      min(``grid**2 - grid**2 // 2``, N) patches are kept, so a patch can appear twice; they fill the mosaic
      row-major and the tiles left over stay black (0). A ``rng`` permutes the selected tiles among the first
      slots only: black tiles stay at the end. A 128x128 image (16 patches) gives 32 tiles and 17 black ones.

    Where DGS-Net's code sorts unrounded entropies with numpy's default (unstable) sort and skips the division
    by 255 for patches whose grey values are all at most 1 (a scale change that moves their entropies by ~1e-9),
    the two can order differently only patches whose entropies agree to about 1e-6 bits; identical patches,
    such as all-black ones, give the same mosaic in any order.

    Raises:
        ImageTooSmall: with ``"pad"``, an image under one patch in height or width. (DGS-Net's code would make
            an all-black mosaic of it, which says nothing about the image.)
    """
    return patch_selection(image, spec, rng).mosaic()


def crop_image(image: np.ndarray, spec: PreprocessSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply the geometric part of ``spec`` to an RGB uint8 image: ``[size, size, 3]`` uint8."""
    if spec.transform == "clip":
        return center_crop(resize_shortest_side(image, spec.size), spec.size)
    return select_patches(image, spec, rng)


def normalize(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """``[B, S, S, 3]`` uint8 to model input ``[B, 3, S, S]`` float32: (x / 255 - mean) / std."""
    scale = (1.0 / (255.0 * np.asarray(spec.std))).astype(np.float32)[:, None, None]
    offset = (-np.asarray(spec.mean) / np.asarray(spec.std)).astype(np.float32)[:, None, None]
    out = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)  # move bytes, not floats
    out *= scale
    out += offset
    return out


def preprocess(image: np.ndarray, spec: PreprocessSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """One RGB uint8 image to a model input ``[3, S, S]`` float32."""
    return normalize(crop_image(image, spec, rng)[None], spec)[0]


def preprocess_batch(
    images: Sequence[np.ndarray], spec: PreprocessSpec, rng: np.random.Generator | None = None
) -> np.ndarray:
    """RGB uint8 images of any sizes to a model input batch ``[B, 3, S, S]`` float32."""
    if len(images) == 0:
        return np.zeros((0, 3, spec.size, spec.size), np.float32)
    return normalize(np.stack([crop_image(im, spec, rng) for im in images]), spec)
