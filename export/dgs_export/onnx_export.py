"""Torch detector -> ONNX graph -> `.dgs` model package, verified against torch through the SDK's own path."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from dgs_sdk.backends import create_backend
from dgs_sdk.detector import sigmoid
from dgs_sdk.errors import DgsError
from dgs_sdk.package import Manifest, ModelPackage, write_package
from dgs_sdk.preprocess import PreprocessSpec, preprocess_batch

__all__ = ["DEFAULT_OPSET", "ExportError", "ParityError", "export_onnx", "export_package", "torch_probabilities"]

DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = Manifest.input_name, Manifest.output_name  # the manifest's defaults


class ExportError(DgsError, ValueError):
    """A model cannot be exported as asked; the message says why."""


class ParityError(ExportError):
    """The exported graph does not reproduce the torch model's probabilities within tolerance."""


def export_onnx(model: nn.Module, image_size: int, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                batch_size: int = 1, simplify: bool = True) -> bytes:
    """Export ``model`` (image batch ``[B, 3, S, S]`` -> logit ``[B]``) to checked ONNX bytes.

    Args:
        model: the inference network; put in eval mode here.
        image_size: S.
        opset: ONNX opset version.
        dynamic_batch: a dynamic batch axis (the default); otherwise the graph is fixed to ``batch_size``.
        batch_size: batch of the example input, and of the graph when ``dynamic_batch`` is false.
        simplify: fold constants and drop dead nodes with onnxscript's optimizer (about half the nodes of a
            ViT); the result is checked and, like every export, verified against torch by `export_package`.
    """
    model = model.eval()
    example = torch.randn(max(batch_size, 2) if dynamic_batch else batch_size, 3, image_size, image_size)
    buffer = io.BytesIO()
    # The TorchScript exporter: seconds instead of the dynamo exporter's tens of seconds on a ViT, and it
    # handles open_clip's attention once the fused kernel is out of the way. Its deprecation notice and tracer
    # remarks about shape checks inside nn.MultiheadAttention are expected and not actionable here.
    with torch.no_grad(), _unfused_attention(), warnings.catch_warnings(), _exporter_errors(opset):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    if simplify:
        import onnxscript.optimizer

        proto = onnxscript.optimizer.optimize(proto)
        onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


@contextlib.contextmanager
def _unfused_attention():
    """Trace `nn.MultiheadAttention` through its composite path rather than torch's fused kernel.

    In eval mode under no_grad, attention with an even head count (every open_clip ViT: 12 heads in ViT-B, 16
    in ViT-L) takes the fused ``aten::_native_multi_head_attention``, which the TorchScript exporter has no ONNX
    translation for. The composite path computes the same attention from ops it does translate; the global
    switch is put back as it was, even when the export fails.
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def _exporter_errors(opset: int):
    """torch's exporter fails with its own types (unsupported operators, unknown opsets): one clear error."""
    try:
        yield
    except RuntimeError as e:  # torch.onnx's OnnxExporterError and UnsupportedOperatorError are RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX export at opset {opset} failed: {first}") from None


def torch_probabilities(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    """Probabilities of "fake" from the torch model for a preprocessed batch ``[B, 3, S, S]``."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(batch)).float().numpy()
    return sigmoid(logits)


def export_package(
    model: nn.Module,
    out: str | os.PathLike,
    preprocess: PreprocessSpec,
    parity_images: Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    threshold_source: str = "default",
    architecture: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    batch_size: int | None = None,
    tolerance: float = 1e-4,
) -> Path:
    """Export ``model`` to a `.dgs` package and verify it.

    The package is run by the SDK's ONNX Runtime backend (CPU) on ``parity_images`` (RGB uint8 arrays)
    preprocessed by the SDK; the largest probability difference to torch must be at most ``tolerance``, else
    no package is written and `ParityError` gives the figures. The figures go into the manifest's provenance
    (``parity``), and the written file is loaded back to check its checksums. ``batch_size`` fixes the graph's
    batch (for runtimes that want static shapes); None keeps it dynamic.
    """
    if not parity_images:
        raise ExportError("parity_images is empty: at least one real image is needed to verify the export")
    onnx_bytes = export_onnx(model, preprocess.size, opset=opset, dynamic_batch=batch_size is None,
                             batch_size=batch_size or 1)
    manifest = Manifest(
        preprocess=preprocess,
        threshold=threshold,
        threshold_source=threshold_source,
        architecture=dict(architecture or {}),
        provenance=dict(provenance or {}),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )
    out = Path(out)
    members = {manifest.model_file: onnx_bytes}
    batch = preprocess_batch(parity_images, preprocess)  # [B, 3, S, S]
    expected = torch_probabilities(model, batch)
    candidate = ModelPackage(path=out, manifest=manifest, members=members)
    actual = sigmoid(create_backend("onnxruntime", candidate, device="cpu").run(batch))
    worst = float(np.max(np.abs(actual - expected)))
    if worst > tolerance:
        raise ParityError(
            f"{out}: ONNX Runtime differs from torch by up to {worst:.2e} in probability on "
            f"{len(batch)} images (tolerance {tolerance:.0e}); no package was written"
        )
    manifest.provenance["parity"] = {"max_abs_probability_diff": worst, "images": len(batch), "tolerance": tolerance}
    path = write_package(out, manifest, members)  # atomic: an existing package is replaced only by a good one
    ModelPackage.load(path)
    return path
