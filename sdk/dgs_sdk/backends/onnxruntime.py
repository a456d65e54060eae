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


# ONNX Runtime's CPU provider crashes the process (a segmentation fault, while creating the session) on FP16
# graphs at ORT_ENABLE_ALL (measured with 1.24 and 1.32, on ViT-B-16 and dgs-tiny-vit); this is the highest level
# at which it runs them, with the same outputs as the lower ones (benchmarks/RESULTS.md).
FP16_CPU_LEVEL = "ORT_ENABLE_EXTENDED"
# Variants holding FP16 tensors: fp16, and int8, whose unquantized nodes are FP16 (dgs_export.precision).
HOLDS_FP16 = ("fp16", "int8")


def optimization_level(ort, precision: str, on_cuda: bool):
    """The graph optimisation level a variant runs at: the highest, except for variants holding FP16 tensors on
    the CPU provider (`FP16_CPU_LEVEL`)."""
    if precision in HOLDS_FP16 and not on_cuda:
        return getattr(ort.GraphOptimizationLevel, FP16_CPU_LEVEL)
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


class OnnxRuntimeBackend(Backend):
    """Runs one of the package's ONNX variants with ONNX Runtime.

    Variants by speed (`preferred_precisions`, measured in benchmarks/RESULTS.md): on CPU ``int8-cpu`` (its own
    dynamic INT8 operators, 1.6x fp32 on ViT-B-16), ``fp32``, ``fp16`` (0.9x) and ``int8`` (0.65x: Q/DQ made for
    TensorRT, with FP16 between the quantized nodes), the last two at a lower graph optimisation level (see
    `optimization_level`); on CUDA ``fp16``, ``fp32``, ``int8-cpu``, ``int8``.
    """

    name = "onnxruntime"
    precisions = ("int8-cpu", "fp32", "fp16", "int8")

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

    @classmethod
    def preferred_precisions(cls, device: str | None) -> tuple[str, ...]:
        kind, _ = parse_device(device)
        if kind != "cpu" and "CUDAExecutionProvider" in cls.available_providers():
            return ("fp16", "fp32", "int8-cpu", "int8")
        return cls.precisions

    def __init__(self, package: ModelPackage, device: str | None = None, precision: str = "fp32") -> None:
        super().__init__(package, device, precision)
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
        on_cuda = providers[0] != "CPUExecutionProvider"
        options.graph_optimization_level = optimization_level(ort, precision, on_cuda)
        # Spinning threads would take the cores from the threads that decode the next batch meanwhile.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: a package's shape notes are not the user's concern
        # The package's graph was checked (`ModelPackage.check_graph`): it holds all its data and has the
        # interface its manifest describes.
        try:
            self._session = ort.InferenceSession(self.model_bytes, sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own types for invalid graphs
            raise ModelPackageError(f"{self.where} cannot be loaded by onnxruntime ({str(e).strip()})") from None
        self._input, self._output = package.manifest.input_name, package.manifest.output_name
        self._ort = ort
        self._running = None  # the RunOptions of the run in progress, for `cancel`
        used = self._session.get_providers()
        self._device = f"cuda:{index}" if used and used[0] == "CUDAExecutionProvider" else "cpu"

    @property
    def device(self) -> str:
        return self._device

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        options = self._running = self._ort.RunOptions()
        try:
            (logits,) = self._session.run([self._output], {self._input: batch}, options)
        except Exception as e:  # a graph that fails on real input (a shape it cannot take, say), or cancelled
            raise ModelPackageError(f"{self.where}: onnxruntime failed to run it ({str(e).strip()})") from None
        finally:
            self._running = None
        return logits

    def cancel(self) -> None:
        options = self._running
        if options is not None:
            options.terminate = True
