"""dgs_trainer: fit CLIP-based detectors of generated images with PyTorch and open_clip."""

from .data import DataLayoutError, Sample, discover_samples, load_samples, read_manifest
from .models import ClipImageDetector, build_image_detector, create_clip, list_archs

__all__ = [
    "ClipImageDetector",
    "DataLayoutError",
    "Sample",
    "build_image_detector",
    "create_clip",
    "discover_samples",
    "list_archs",
    "load_samples",
    "read_manifest",
]
