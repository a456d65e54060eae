"""dgs_trainer: fit CLIP-based detectors of generated images with PyTorch and open_clip."""

from .models import ClipImageDetector, build_image_detector, create_clip, list_archs

__all__ = ["ClipImageDetector", "build_image_detector", "create_clip", "list_archs"]
