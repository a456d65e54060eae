"""dgs_sdk: detect AI-generated images with a `.dgs` model package; torch-free.

>>> from dgs_sdk import Detector
>>> Detector("model.dgs").predict("photo.jpg").probability
"""

from importlib import metadata as _metadata

from .detector import Detector, Prediction
from .errors import BackendUnavailable, DgsError, ImageTooLarge, ModelPackageError, UnreadableImage
from .package import Manifest, ModelPackage, write_package
from .preprocess import PreprocessSpec, preprocess, preprocess_batch

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
    "ModelPackageError",
    "BackendUnavailable",
    "__version__",
]
