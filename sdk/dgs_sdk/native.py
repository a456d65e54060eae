"""The optional native core: the ``dgs_native`` module built from ``cpp_bindings/`` (``pip install ./cpp_bindings``).

When it is importable, speaks this SDK's interface and has dgs's version, preprocessing computes the patch entropies
of ``patch-select`` with it (OpenCV's DFT in C++, without the GIL) instead of numpy; the results are the same. Decoding
and resizing stay in opencv-python either way. ``DGS_NATIVE=0`` in the environment turns it off. The module is
imported on first use, never when dgs_sdk is imported.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType

__all__ = ["API", "INSTALL_HINT", "module", "status"]

# The interface version of dgs_native this SDK speaks (the module's ``API`` attribute); the module raises it when a
# function dgs_sdk calls changes.
API = 1
INSTALL_HINT = "pip install ./cpp_bindings"
# The functions dgs_sdk calls: a module that lacks one was built from an unfinished tree.
_USED = ("patch_entropies",)


@dataclass(frozen=True)
class _Probe:
    module: ModuleType | None
    status: str


def _dgs_version() -> str:
    from . import __version__

    return __version__


@functools.lru_cache(maxsize=4)
def _probe(setting: str | None) -> _Probe:
    """Import and check dgs_native once per value of DGS_NATIVE."""
    if setting is not None and setting.strip() == "0":
        return _Probe(None, "native core turned off by DGS_NATIVE=0")
    try:
        import dgs_native
    except ModuleNotFoundError as error:
        if error.name != "dgs_native":  # the module is there but something it imports is not
            return _Probe(None, f"native core cannot be loaded ({error}): reinstall it with {INSTALL_HINT}")
        return _Probe(None, f"native core not installed: {INSTALL_HINT}")
    except ImportError as error:  # built, but a shared library it links (OpenCV, libzip, ...) is missing
        return _Probe(None, f"native core cannot be loaded ({error}): reinstall it with {INSTALL_HINT}")
    version, api = getattr(dgs_native, "__version__", None), getattr(dgs_native, "API", None)
    if api != API:
        return _Probe(None, f"native core {version} not used: it speaks interface {api!r}, this dgs speaks {API} "
                            f"(reinstall it: {INSTALL_HINT})")
    if version != _dgs_version():
        return _Probe(None, f"native core not used: version {version} does not match dgs {_dgs_version()} "
                            f"(reinstall it: {INSTALL_HINT})")
    missing = [name for name in _USED if not callable(getattr(dgs_native, name, None))]
    if missing:
        return _Probe(None, f"native core {version} not used: it lacks {', '.join(missing)} (reinstall it: "
                            f"{INSTALL_HINT})")
    opencv = dgs_native.opencv_version() if callable(getattr(dgs_native, "opencv_version", None)) else "unknown"
    return _Probe(dgs_native, f"native core {version} in use (OpenCV {opencv})")


def module() -> ModuleType | None:
    """The dgs_native module when it is usable, else None (off, not installed, or another interface or version)."""
    return _probe(os.environ.get("DGS_NATIVE")).module


def status() -> str:
    """One line for ``dgs info``: whether the native core is in use, and if not, why not."""
    return _probe(os.environ.get("DGS_NATIVE")).status
