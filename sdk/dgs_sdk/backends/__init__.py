"""Inference backends behind one interface, chosen by name from an explicit registry."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..errors import BackendUnavailable, ModelPackageError
from ..limits import SMOKE_CHECK_SECONDS
from ..package import PRECISIONS, Manifest, ModelPackage
from .base import Backend
from .onnxruntime import OnnxRuntimeBackend
from .tensorrt import TensorRTBackend

__all__ = ["Backend", "BACKENDS", "AUTO_ORDER", "available_backends", "choose_backend", "create_backend",
           "smoke_check"]

BACKENDS: dict[str, type[Backend]] = {
    TensorRTBackend.name: TensorRTBackend,
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
}
# `backend="auto"` takes the first available of these (TensorRT only where a CUDA device is).
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime")


def available_backends() -> list[str]:
    """Names of the registered backends whose runtime imports here."""
    return [name for name, cls in BACKENDS.items() if cls.is_available()]


def choose_backend(name: str, manifest: Manifest, device: str | None = None, precision: str = "auto",
                   source: str = "") -> tuple[type[Backend], str]:
    """The backend class and the variant that will run a package, from its manifest alone.

    ``name="auto"`` takes the first backend of `AUTO_ORDER` that imports here and runs a variant the package
    has (the asked one, when ``precision`` is not ``"auto"``). ``precision="auto"`` takes the first variant of
    the backend's `Backend.preferred_precisions` for ``device`` that the package has: its fastest.

    Raises:
        BackendUnavailable: the backend is unknown or cannot be imported, or none can run the package.
        ModelPackageError: the package lacks the asked variant (the message lists those it has).
    """
    if precision != "auto":
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"precision {precision!r} is unknown (known: auto, {', '.join(PRECISIONS)})")
        manifest.variant(precision, source)  # a clear error when the package lacks it
    if name != "auto" and name not in BACKENDS:
        raise BackendUnavailable(f"backend {name!r} is unknown (known: auto, {', '.join(BACKENDS)})")
    names = [c for c in AUTO_ORDER if BACKENDS[c].is_available()] if name == "auto" else [name]
    if not names:
        raise BackendUnavailable(f"no inference backend is available (tried {', '.join(AUTO_ORDER)})")
    if name != "auto" and precision not in ("auto", *BACKENDS[name].precisions):
        raise BackendUnavailable(f"the {name} backend does not run the {precision!r} variant (it runs "
                                 f"{', '.join(BACKENDS[name].precisions)})")
    if name != "auto" and not BACKENDS[name].is_available():
        raise BackendUnavailable(f"backend {name!r} cannot be used here: {BACKENDS[name].unavailable_reason()}")
    if name != "auto" and not BACKENDS[name].preferred_precisions(device):
        raise BackendUnavailable(f"the {name} backend does not run on device {device!r}")
    for candidate in names:
        runs = BACKENDS[candidate].preferred_precisions(device)
        chosen = [p for p in runs if p in manifest.variants and precision in ("auto", p)]
        if chosen:
            return BACKENDS[candidate], chosen[0]
    where = f"{source}: " if source else ""
    wanted = f"the {precision!r} variant" if precision != "auto" else f"its variants ({', '.join(manifest.variants)})"
    raise BackendUnavailable(f"{where}no available backend ({', '.join(names)}) runs {wanted}")


def create_backend(name: str, package: ModelPackage, device: str | None = None, precision: str = "auto") -> Backend:
    """Instantiate backend ``name`` (or the best available for ``"auto"``) for a loaded package with the variant
    ``precision`` (or the backend's fastest for ``"auto"``; see `choose_backend`), and run its `smoke_check`."""
    cls, precision = choose_backend(name, package.manifest, device, precision, str(package.path))
    backend = cls(package, device, precision)
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
