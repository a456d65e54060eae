"""dgs_sdk: detect AI-generated images with a `.dgs` model package; torch-free.

>>> from dgs_sdk import Detector
>>> Detector("model.dgs").predict("photo.jpg").probability
"""

import os as _os
from importlib import metadata as _metadata

from .limits import MAX_PIXELS as _MAX_PIXELS

# OpenCV reads its decoder pixel bound once, when it loads. Setting it here, before this package first imports
# cv2, makes OpenCV also refuse from their header the decompression bombs that Pillow cannot parse (e.g. float
# TIFF). It has no effect if the application imported cv2 first; Pillow's header check still applies then.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(_MAX_PIXELS))
# A file that fails to decode gets an error row naming it; OpenCV's own log lines about it would only be noise.
_os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")

from .detector import Detector, Prediction  # noqa: E402
from .errors import (  # noqa: E402
    BackendUnavailable,
    DgsError,
    ImageTooLarge,
    ImageTooSmall,
    ModelPackageError,
    UnreadableImage,
)
from .package import Manifest, ModelPackage, write_package  # noqa: E402
from .preprocess import PreprocessSpec, preprocess, preprocess_batch  # noqa: E402

try:
    __version__ = _metadata.version("dgs")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Detector",
    "Prediction",
    "PreprocessSpec",
    "preprocess",
    "preprocess_batch",
    "Manifest",
    "ModelPackage",
    "write_package",
    "DgsError",
    "UnreadableImage",
    "ImageTooLarge",
    "ImageTooSmall",
    "ModelPackageError",
    "BackendUnavailable",
    "__version__",
]
