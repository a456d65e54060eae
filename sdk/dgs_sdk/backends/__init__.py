"""Inference backends behind one interface, chosen by name from an explicit registry."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..errors import BackendUnavailable, ModelPackageError
from ..limits import SMOKE_CHECK_SECONDS
from ..package import ModelPackage
from .base import Backend
from .onnxruntime import OnnxRuntimeBackend

__all__ = ["Backend", "BACKENDS", "AUTO_ORDER", "available_backends", "create_backend", "smoke_check"]

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
}
# `backend="auto"` takes the first available of these.
AUTO_ORDER: tuple[str, ...] = ("onnxruntime",)


def available_backends() -> list[str]:
    """Names of the registered backends whose runtime imports here."""
    return [name for name, cls in BACKENDS.items() if cls.is_available()]


def create_backend(name: str, package: ModelPackage, device: str | None = None) -> Backend:
    """Instantiate backend ``name`` (or the best available for ``"auto"``) for a loaded package, and run its
    `smoke_check`."""
    if name == "auto":
        candidates = [c for c in AUTO_ORDER if BACKENDS[c].is_available()]
        if not candidates:
            raise BackendUnavailable(f"no inference backend is available (tried {', '.join(AUTO_ORDER)})")
        name = candidates[0]
    if name not in BACKENDS:
        raise BackendUnavailable(f"backend {name!r} is unknown (known: auto, {', '.join(BACKENDS)})")
    if not BACKENDS[name].is_available():
        raise BackendUnavailable(f"backend {name!r} cannot be imported here")
    backend = BACKENDS[name](package, device)
    smoke_check(backend)
    return backend


def smoke_check(backend: Backend, seconds: float | None = None) -> None:
    """Run the model once on two grey images (zeros after normalisation) before it scores anything.

    A graph that computes an output other than one logit per image (two images tell [B] from [1] or [2B]), a
    non-finite logit, or that takes longer than ``seconds`` (`SMOKE_CHECK_SECONDS`) is refused here, at load,
    rather than halfway through a scan.

    Raises:
        ModelPackageError: naming the package and what the graph gave.
    """
    seconds = SMOKE_CHECK_SECONDS if seconds is None else seconds
    size = backend.package.manifest.preprocess.size
    too_slow = ModelPackageError(f"{backend.where}: took more than {seconds:g} s to score two grey images at load; "
                                 "refused")
    timer = threading.Timer(seconds, backend.cancel)
    timer.start()
    started = time.monotonic()
    try:
        logits = backend.run(np.zeros((backend.fixed_batch or 2, 3, size, size), np.float32))
    except ModelPackageError:
        if time.monotonic() - started >= seconds:
            raise too_slow from None
        raise
    finally:
        timer.cancel()
    if time.monotonic() - started >= seconds:  # the slow operator was the last: nothing was left to cancel
        raise too_slow
    if not np.isfinite(logits).all():
        raise ModelPackageError(
            f"{backend.where}: gives a non-finite logit ({logits[~np.isfinite(logits)][0]}) for a grey image; "
            "the model is broken"
        )
