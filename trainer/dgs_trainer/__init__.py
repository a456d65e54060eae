"""dgs_trainer: fit CLIP-based detectors of generated images with PyTorch and open_clip."""

try:
    import open_clip  # noqa: F401
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(f"dgs_trainer needs the train extra: pip install 'dgs[train]' ({e})") from e

from .models import ClipImageDetector, build_image_detector, create_clip, list_archs

__all__ = [
    "ClipImageDetector",
    "build_image_detector",
    "create_clip",
    "list_archs",
]
