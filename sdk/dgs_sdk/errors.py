"""Errors raised by the SDK. Every message names the file or value at fault and what was expected."""

from __future__ import annotations

__all__ = [
    "DgsError",
    "UnreadableImage",
    "ImageTooLarge",
    "ImageTooSmall",
    "ModelPackageError",
    "BackendUnavailable",
    "EvaluationError",
]


class DgsError(Exception):
    """Base class of every error the SDK raises on purpose."""


class UnreadableImage(DgsError):
    """An input could not be decoded into an image (missing, empty, truncated, not an image)."""


class ImageTooLarge(UnreadableImage):
    """An image declares more pixels than the decoder accepts (a decompression bomb, or simply too big)."""


class ImageTooSmall(UnreadableImage):
    """An image too small for the model's preprocessing (under one patch in a dimension, for ``pad``)."""


class ModelPackageError(DgsError):
    """A `.dgs` model package is missing, malformed, of an unknown format version or fails its checksums."""


class BackendUnavailable(DgsError):
    """An inference backend cannot be used here; the message names what to install."""


class EvaluationError(DgsError, ValueError):
    """Labelled data or options that cannot give an evaluation or a benchmark; the message names the value at fault."""
