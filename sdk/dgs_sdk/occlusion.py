"""Occlusion maps: how much a model's logit drops when each region of its input is masked.

One square window of the model input at a time is filled with the normalised zero (the mean colour of the spec's
normalisation); the masked inputs run through a backend's ``run`` in batches, so any backend (ONNX Runtime,
TensorRT) serves. A pixel's value is the mean drop over the windows that cover it: positive where the region pushed
the logit of "fake" up, negative where it pushed it toward "real". It says what the output depends on, not why; and
a masked input is one the model never saw in training, so small values are noise more than meaning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DgsError
from .limits import MAX_BATCH_BYTES
from .preprocess import PreprocessSpec

__all__ = ["MAX_WINDOWS", "OcclusionError", "OcclusionSettings", "Occlusion", "window_starts", "occlusion_map"]

# Masked inputs one map may run: 64 x 64 window positions. A 224-px input with a 32-px window and a stride of 16
# needs 169; more than this is a stride too small to read, at minutes of inference per image.
MAX_WINDOWS = 4096


class OcclusionError(DgsError):
    """Occlusion settings that cannot be used, or a model output that is not a finite number."""


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows ``stride`` apart along a side of ``size``; the last one always ends at the edge."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@dataclass(frozen=True)
class OcclusionSettings:
    """How the occlusion map masks the model input.

    Attributes:
        window: side of the masked square in model-input pixels; ``None``: the patch size for ``patch-select``
            (one tile of the mosaic), ``size // 7`` for ``clip`` (32 at 224).
        stride: step between windows; ``None``: half the window. At most the window, so every pixel is covered.
        batch_size: masked inputs per inference call (capped like `Detector`'s batches).
    """

    window: int | None = None
    stride: int | None = None
    batch_size: int = 32

    def resolve(self, spec: PreprocessSpec) -> tuple[int, int]:
        """The window and stride for ``spec``'s model input, checked.

        Raises:
            OcclusionError: a window outside 1..size, a stride outside 1..window, or more than `MAX_WINDOWS`
                windows.
        """
        size = spec.size
        window = self.window if self.window is not None else (
            spec.patch_size if spec.transform == "patch-select" else max(1, size // 7))
        if not 1 <= window <= size:
            raise OcclusionError(f"occlusion window {window} px: must be from 1 to the model input's size, {size} px")
        stride = self.stride if self.stride is not None else max(1, window // 2)
        if not 1 <= stride <= window:
            raise OcclusionError(f"occlusion stride {stride} px: must be from 1 to the window, {window} px (a larger "
                               "stride would leave pixels that no window covers)")
        if self.batch_size < 1:
            raise OcclusionError(f"occlusion batch size must be at least 1, got {self.batch_size}")
        count = len(window_starts(size, window, stride)) ** 2
        if count > MAX_WINDOWS:
            smallest = next((s for s in range(stride, window + 1) if len(window_starts(size, window, s)) ** 2
                             <= MAX_WINDOWS), None)
            if smallest is None:
                fewest = next(w for w in range(window, size + 1) if len(window_starts(size, w, w)) ** 2 <= MAX_WINDOWS)
                raise OcclusionError(f"occlusion window {window} px gives more than {MAX_WINDOWS:,} masked inputs on a "
                                     f"{size}-px model input at any stride; use a window of at least {fewest} px")
            raise OcclusionError(f"occlusion stride {stride} px with a {window}-px window gives {count:,} masked "
                                 f"inputs on a {size}-px model input; at most {MAX_WINDOWS:,} are run: use a stride of "
                                 f"at least {smallest} px or a larger window")
        return window, stride


@dataclass
class Occlusion:
    """An occlusion map of one model input.

    Attributes:
        window: side of the masked square, in model-input pixels.
        stride: step between windows.
        tops: ``[R]`` first row of each row of windows.
        lefts: ``[C]`` first column of each column of windows.
        drops: ``[R, C]`` float64: the unmasked input's logit minus the logit with window (r, c) masked.
        heatmap: ``[S, S]`` float64: the mean of ``drops`` over the windows covering each pixel.
        logit: the unmasked input's logit.
    """

    window: int
    stride: int
    tops: np.ndarray
    lefts: np.ndarray
    drops: np.ndarray
    heatmap: np.ndarray
    logit: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "stride": self.stride,
            "fill": "normalised zero (the normalisation's mean colour)",
            "value": "logit of the unmasked input minus logit with the window masked; positive: the region pushed "
                     "toward fake",
            "tops": self.tops.tolist(),
            "lefts": self.lefts.tolist(),
            "drops": self.drops.tolist(),
        }


def occlusion_map(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, window: int, stride: int,
                  batch_size: int = 32, name: str = "<input>") -> Occlusion:
    """Mask each ``window`` x ``window`` square of ``x`` in turn and record how much the logit drops.

    Args:
        run: a backend's ``run``: ``[B, 3, S, S]`` float32 -> logits ``[B]``.
        x: one normalised model input ``[3, S, S]`` float32; a masked square is set to 0 (the mean colour).
        window: side of the masked square (see `OcclusionSettings.resolve` for the checks).
        stride: step between windows, at most ``window``.
        batch_size: masked inputs per call of ``run``.
        name: the image's name, for errors.

    Raises:
        OcclusionError: the model's output for the input or a masked input is not a finite number.
    """
    size = x.shape[-1]
    tops = lefts = np.array(window_starts(size, window, stride))
    positions = [(top, left) for top in tops for left in lefts]
    logit = float(run(x[None])[0])
    if not math.isfinite(logit):
        raise OcclusionError(f"{name}: the model's output for this image is not a finite number ({logit})")
    batch_size = max(1, min(batch_size, MAX_BATCH_BYTES // x.nbytes))
    masked_logits = np.empty(len(positions), np.float64)
    for start in range(0, len(positions), batch_size):
        chunk = positions[start : start + batch_size]
        batch = np.repeat(x[None], len(chunk), axis=0)  # [b, 3, S, S]
        for k, (top, left) in enumerate(chunk):
            batch[k, :, top : top + window, left : left + window] = 0.0
        masked_logits[start : start + len(chunk)] = run(batch)
    bad = int((~np.isfinite(masked_logits)).sum())
    if bad:
        raise OcclusionError(f"{name}: the model's output is not a finite number for {bad} of the "
                           f"{len(positions)} masked inputs")
    drops = (logit - masked_logits).reshape(len(tops), len(lefts))
    total = np.zeros((size, size))
    covered = np.zeros((size, size))
    for (top, left), drop in zip(positions, drops.ravel(), strict=True):
        total[top : top + window, left : left + window] += drop
        covered[top : top + window, left : left + window] += 1
    return Occlusion(window=window, stride=stride, tops=tops, lefts=lefts, drops=drops, heatmap=total / covered,
                     logit=logit)
