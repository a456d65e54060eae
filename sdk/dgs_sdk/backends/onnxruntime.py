"""ONNX Runtime backend: the CUDA execution provider when present, the CPU one otherwise."""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailable, ModelPackageError
from ..package import ModelPackage
from .base import Backend

__all__ = ["OnnxRuntimeBackend", "parse_device"]


def parse_device(device: str | None) -> tuple[str | None, int]:
    """``None``/``"auto"`` -> (None, 0); ``"cpu"`` -> ("cpu", 0); ``"cuda"``/``"cuda:N"`` -> ("cuda", N)."""
    if device is None or device == "auto":
        return None, 0
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device {device!r} is not understood (expected 'cpu', 'cuda' or 'cuda:N')")
    return kind, int(index or 0)


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendUnavailable(f"onnxruntime cannot be imported ({e}); pip install onnxruntime") from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """Runs the package's ONNX member with ONNX Runtime."""

    name = "onnxruntime"

    @classmethod
    def is_available(cls) -> bool:
        try:
            _import_ort()
        except BackendUnavailable:
            return False
        return True

    @staticmethod
    def available_providers() -> list[str]:
        return list(_import_ort().get_available_providers())

    def __init__(self, package: ModelPackage, device: str | None = None) -> None:
        ort = _import_ort()
        kind, index = parse_device(device)
        available = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available
        if kind == "cuda" and not has_cuda:
            raise BackendUnavailable(
                f"device {device!r} asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"(providers: {', '.join(available)}); pip install onnxruntime-gpu"
            )
        providers: list = ["CPUExecutionProvider"]
        if has_cuda and kind != "cpu":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would take the cores from the threads that decode the next batch meanwhile.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        manifest = package.manifest
        where = f"{package.path}: {manifest.model_file}"
        try:
            self._session = ort.InferenceSession(package.model_bytes, sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own types for invalid graphs
            raise ModelPackageError(f"{where} cannot be loaded by onnxruntime ({str(e).strip()})") from None
        self._input, self._output = manifest.input_name, manifest.output_name
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if self._input not in inputs:
            raise ModelPackageError(f"{where} has no input {self._input!r} (inputs: {', '.join(inputs)})")
        if self._output not in outputs:
            raise ModelPackageError(f"{where} has no output {self._output!r} (outputs: {', '.join(outputs)})")
        size = manifest.preprocess.size
        expected = [3, size, size]
        shape = inputs[self._input]
        if len(shape) != 4 or any(isinstance(a, int) and a != b for a, b in zip(shape[1:], expected, strict=True)):
            raise ModelPackageError(
                f"{where} takes input of shape {shape}, but the manifest's preprocessing gives [B, 3, {size}, {size}]"
            )
        # A graph exported with a fixed batch K takes exactly K images: run() splits and pads to it.
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        used = self._session.get_providers()
        self._device = f"cuda:{index}" if used and used[0] == "CUDAExecutionProvider" else "cpu"

    @property
    def device(self) -> str:
        return self._device

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        k = self._fixed_batch
        if k is None or len(batch) == k:
            (logits,) = self._session.run([self._output], {self._input: batch})
            return np.asarray(logits, np.float32).reshape(len(batch))
        out = []
        for start in range(0, len(batch), k):
            chunk = batch[start : start + k]
            padded = np.concatenate([chunk, np.zeros((k - len(chunk), *chunk.shape[1:]), np.float32)])
            out.append(self.run(padded)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros(0, np.float32)
