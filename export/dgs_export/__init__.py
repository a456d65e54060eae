"""dgs_export: turn trained torch detectors into deployable `.dgs` model packages."""

from .onnx_export import ParityError, export_onnx, export_package, torch_probabilities

__all__ = ["ParityError", "export_onnx", "export_package", "torch_probabilities"]
