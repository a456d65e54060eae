"""dgs_export: turn trained torch detectors into deployable `.dgs` model packages."""

try:
    import onnx  # noqa: F401
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(f"dgs_export needs the export and train extras: pip install 'dgs[train,export]' ({e})") from e

from .onnx_export import ParityError, export_onnx, export_package, torch_probabilities  # noqa: E402

__all__ = ["ParityError", "export_onnx", "export_package", "torch_probabilities"]
