"""Safetensors files of a run: atomic writes, and reads that refuse anything but a bounded regular file and check
what they read against what the model needs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dgs_sdk.files import AtomicFile, open_regular

from .errors import RunFolderError

__all__ = ["MAX_RUN_FILE_BYTES", "atomic_save", "check_regular", "check_tensors", "open_safetensors", "read_tensors"]

# A run's tensors and logs stay well under this bound.
MAX_RUN_FILE_BYTES = 64 * 1024**3


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file through a temporary file and a rename: a reader never sees half of it."""
    with AtomicFile(path) as out:
        save_file(tensors, str(out.tmp), metadata=metadata)


def check_regular(path: Path) -> None:
    """Refuse, unopened, anything but a regular file of bounded size (a FIFO would hang, /dev/zero never end)."""
    file, _ = open_regular(path, MAX_RUN_FILE_BYTES, RunFolderError)
    file.close()


def open_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file of a run."""
    if not path.is_file() and not path.exists():
        raise RunFolderError(f"{path}: missing")
    check_regular(path)
    try:
        with safe_open(str(path), "pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise RunFolderError(f"{path}: not a readable safetensors file ({e}); the run is damaged") from None


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, Any], source: str | Path) -> None:
    """Raise `RunFolderError` unless ``tensors`` has exactly the keys of ``expected`` (tensors or shapes), each
    of the expected shape."""
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise RunFolderError(f"{source}: does not fit this model (missing {missing[:4]}, unexpected {extra[:4]})")
    for key, like in expected.items():
        shape = tuple(like.shape if isinstance(like, torch.Tensor) else like)
        if tuple(tensors[key].shape) != shape:
            raise RunFolderError(f"{source}: tensor {key} has shape {list(tensors[key].shape)}, this model needs "
                                 f"{list(shape)}")


def read_tensors(path: Path, expected: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; with ``expected`` (name -> tensor or shape), checked against it."""
    tensors, _ = open_safetensors(path)
    if expected is not None:
        check_tensors(tensors, expected, path)
    return tensors


