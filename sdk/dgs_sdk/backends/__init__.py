"""Inference backends behind one interface, chosen by name from an explicit registry."""

from __future__ import annotations

from ..errors import BackendUnavailable
from ..package import ModelPackage
from .base import Backend
from .onnxruntime import OnnxRuntimeBackend

__all__ = ["Backend", "BACKENDS", "AUTO_ORDER", "available_backends", "create_backend"]

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
}
# `backend="auto"` takes the first available of these.
AUTO_ORDER: tuple[str, ...] = ("onnxruntime",)


def available_backends() -> list[str]:
    """Names of the registered backends whose runtime imports here."""
    return [name for name, cls in BACKENDS.items() if cls.is_available()]


def create_backend(name: str, package: ModelPackage, device: str | None = None) -> Backend:
    """Instantiate backend ``name`` (or the best available for ``"auto"``) for a loaded package."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            if BACKENDS[candidate].is_available():
                return BACKENDS[candidate](package, device)
        raise BackendUnavailable(f"no inference backend is available (tried {', '.join(AUTO_ORDER)})")
    if name not in BACKENDS:
        raise BackendUnavailable(f"backend {name!r} is unknown (known: auto, {', '.join(BACKENDS)})")
    if not BACKENDS[name].is_available():
        raise BackendUnavailable(f"backend {name!r} cannot be imported here")
    return BACKENDS[name](package, device)
