"""Reduced-precision variants of an exported float32 graph, and the images that calibrate them.

Every conversion is a pure function from float32 ONNX bytes to ONNX bytes with the same interface: input
``image`` ``[B, 3, S, S]`` float32 -> output ``logit`` ``[B]`` float32.

- ``fp16``: NVIDIA Model Optimizer's AutoCast; nodes whose values would overflow float16 (found by running the
  graph on calibration images) stay in float32, and so do the graph's inputs and outputs. For GPUs.
- ``int8``: Model Optimizer's INT8 quantization: QuantizeLinear/DequantizeLinear pairs whose scales are
  calibrated on real images (entropy calibration, run by ONNX Runtime on the CPU); TensorRT fuses them into INT8
  kernels. The rest of the graph is float16 (Model Optimizer's ``high_precision_dtype``), so that a strongly typed
  TensorRT network, which takes each tensor's type from the graph, runs it as INT8 + FP16 rather than INT8 +
  float32; inputs and outputs stay float32.
- ``int8-cpu``: ONNX Runtime's dynamic INT8 quantization, weights per output channel. For ONNX Runtime on CPUs.

Calibration images go through the SDK's own preprocessing (`dgs_sdk.preprocess.crop_image` and `normalize`,
what `dgs_sdk.Detector` feeds the model), so the ranges are those the model sees in use.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from dgs_sdk.data import DataLayoutError, Sample, load_samples, spread
from dgs_sdk.errors import DgsError
from dgs_sdk.image import load_image
from dgs_sdk.preprocess import PreprocessSpec, crop_image, normalize
from dgs_sdk.scan import discover

from .onnx_export import ExportError

__all__ = [
    "CONVERSIONS",
    "DEFAULT_CALIBRATION_IMAGES",
    "REDUCED_PRECISIONS",
    "ImageSets",
    "QuantizationUnavailable",
    "choose_image_sets",
    "load_modelopt",
    "convert",
    "load_calibration_images",
    "to_fp16",
    "to_int8",
    "to_int8_cpu",
]

# NVIDIA's Model Optimizer guide asks for at least 500 calibration images for vision transformers: with fewer,
# entropy calibration of the attention and MLP activations (long-tailed in ViTs) picks ranges that vary from one
# draw of images to the next. 512 is that, rounded to a power of two (whole batches of 32 and 64).
DEFAULT_CALIBRATION_IMAGES = 512
# AutoCast runs the float32 graph once with every intermediate tensor as an output to find the nodes whose values
# float16 cannot hold, which holds all activations of the batch at once: 13.8 GB peak for 16 images of ViT-B/16,
# 7.1 GB for 4 (benchmarks/RESULTS.md). So it takes a few of the calibration images; the ranges it checks
# (|x| <= 512 by default) are far from float16's limit, and what it misses the accuracy gate still sees.
AUTOCAST_IMAGES = 4
INSTALL_HINT = 'pip install "dgs[quantize]"'


class QuantizationUnavailable(ExportError):
    """NVIDIA Model Optimizer (needed for the ``fp16`` and ``int8`` variants) is not installed."""


def load_modelopt():
    """Model Optimizer's ONNX package, with its console logging at warnings and above."""
    try:
        import modelopt.onnx.autocast
        import modelopt.onnx.quantization
    except ImportError as e:
        raise QuantizationUnavailable(
            f"the fp16 and int8 variants need NVIDIA Model Optimizer ({e}); {INSTALL_HINT}"
        ) from None
    return modelopt.onnx


def _check_float32(onnx_bytes: bytes) -> onnx.ModelProto:
    model = onnx.load_from_string(onnx_bytes)
    kinds = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"} & kinds:
        raise ExportError("the graph is already quantized; conversions start from the float32 export")
    return model


@contextlib.contextmanager
def _quiet():
    """Model Optimizer and ONNX Runtime's quantizer log and print their progress; keep it off the command's output
    (a failure still raises, with its own message; log records of errors still pass)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def load_calibration_images(paths: Sequence[str], spec: PreprocessSpec, limit: int = DEFAULT_CALIBRATION_IMAGES,
                            ) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` images spread evenly over ``paths``, decoded and preprocessed as `dgs_sdk.Detector` does
    (`crop_image`, then `normalize`: `dgs_sdk.preprocess.preprocess_batch`, one crop held per image).

    Images that cannot be decoded are passed over. Returns the batch ``[N, 3, S, S]`` and the paths it holds.
    """
    crops, used = [], []
    for path in spread(paths, limit):
        try:
            crops.append(crop_image(load_image(path), spec))  # one crop held per image, not the decoded image
        except DgsError:
            continue
        used.append(path)
    if not crops:
        return np.zeros((0, 3, spec.size, spec.size), np.float32), []
    return normalize(np.stack(crops), spec), used


@dataclass
class ImageSets:
    """Which images calibrate the variants and which score them in the accuracy gate.

    Attributes:
        calibration: image paths that calibrate (int8 ranges, fp16 AutoCast's range check).
        calibration_source: where they come from, for the manifest and the command's report.
        gate: labelled images that the accuracy gate scores.
        gate_source: where they come from.
        overlap: calibration and gate images are the same ones (nothing else was there to keep them apart).
    """

    calibration: list[str]
    calibration_source: str
    gate: list[Sample] = field(default_factory=list)
    gate_source: str = ""
    overlap: bool = False

    def describe(self) -> dict:
        return {
            "calibration": f"{len(self.calibration)} images from {self.calibration_source}",
            "gate": f"{len(self.gate)} labelled images from {self.gate_source}",
            "overlap": self.overlap,
        }


def _labelled(root: str) -> list[Sample] | None:
    try:
        return load_samples(root)
    except DataLayoutError:
        return None


def choose_image_sets(precisions: Sequence[str], train_config, calib_data: str | None = None,
                      calib_images: int = DEFAULT_CALIBRATION_IMAGES, gate_images: int = 1000) -> ImageSets:
    """Pick the calibration and gate images of a run's export, kept apart where the data allows.

    Gate (labelled, held out): the run's validation split; without one, ``calib_data`` if it is labelled,
    else the run's training data. Calibration: ``calib_data`` (labelled or not) if given, else the run's training
    data, less the gate's images. When both come from the same images, they are split between the two
    (alternate images, so both get every generator and label); only when nothing else is left do they overlap.

    Also checks, before the long export starts, that Model Optimizer is installed when ``fp16`` or ``int8``
    is asked for.

    Raises:
        QuantizationUnavailable: Model Optimizer is missing.
        ExportError: no labelled images for the gate, or no images to calibrate.
    """
    if {"fp16", "int8"} & set(precisions):
        load_modelopt()
    given = _labelled(calib_data) if calib_data else None
    training: list[Sample] | None = None
    if train_config.val:
        gate, gate_source = load_samples(train_config.val, train_config.val_split), f"{train_config.val} (validation)"
    elif given:
        gate, gate_source = given, f"{calib_data} (--calib-data)"
    else:
        training = load_samples(train_config.data, train_config.split)
        gate, gate_source = training, f"{train_config.data} (training data: the run has no validation set)"
    if calib_data:
        pool, pool_source = [t.path for t in discover([calib_data]) if t.error is None], f"{calib_data} (--calib-data)"
    else:
        training = training or load_samples(train_config.data, train_config.split)
        pool, pool_source = [s.path for s in training], f"{train_config.data} (training data)"
    in_gate = {os.path.realpath(s.path) for s in gate}
    overlap = False
    if in_gate >= {os.path.realpath(path) for path in pool}:  # one set of images for both: alternate ones to each
        if len(gate) > 1:
            gate, pool = gate[1::2], [s.path for s in gate[0::2]]
        else:
            overlap = True
    else:
        pool = [path for path in pool if os.path.realpath(path) not in in_gate]
    if not gate:
        raise ExportError(f"{gate_source}: no labelled images to score the reduced-precision variants with")
    if not pool:
        raise ExportError(f"{pool_source}: no images to calibrate the reduced-precision variants with")
    return ImageSets(spread(pool, calib_images), pool_source, spread(gate, gate_images), gate_source, overlap)


def to_fp16(onnx_bytes: bytes, calibration: np.ndarray | None = None) -> bytes:
    """Model Optimizer AutoCast to float16, float32 inputs and outputs kept.

    Args:
        onnx_bytes: the float32 graph.
        calibration: preprocessed images ``[N, 3, S, S]``; the first `AUTOCAST_IMAGES` decide which nodes stay
            float32 (those whose values exceed what float16 holds). None: AutoCast's own random inputs.
    """
    mo = load_modelopt()
    model = _check_float32(onnx_bytes)
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="dgs-fp16-") as tmp:
        source = Path(tmp) / "model.onnx"
        source.write_bytes(onnx_bytes)
        data = None
        if calibration is not None and len(calibration):
            data = os.fspath(Path(tmp) / "calibration.npz")
            np.savez(data, **{input_name: np.ascontiguousarray(calibration[:AUTOCAST_IMAGES], np.float32)})
        with _quiet():
            converted = mo.autocast.convert_to_mixed_precision(
                onnx_path=os.fspath(source), low_precision_type="fp16", keep_io_types=True, calibration_data=data,
                providers=["cpu"],
            )
    return converted.SerializeToString()


def to_int8(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """Model Optimizer INT8 Q/DQ graph for TensorRT, calibrated (entropy) on ``calibration`` ``[N, 3, S, S]``
    with ONNX Runtime on the CPU. Nodes left unquantized run in float16 (see the module's docstring)."""
    if calibration is None or not len(calibration):
        raise ExportError("INT8 quantization needs calibration images (none were given)")
    mo = load_modelopt()
    _check_float32(onnx_bytes)
    with tempfile.TemporaryDirectory(prefix="dgs-int8-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        source.write_bytes(onnx_bytes)
        with _quiet():
            mo.quantization.quantize(
                os.fspath(source),
                quantize_mode="int8",
                calibration_data=np.ascontiguousarray(calibration, np.float32),
                calibration_method="entropy",
                calibration_eps=["cpu"],
                high_precision_dtype="fp16",
                output_path=os.fspath(target),
                log_level="ERROR",
            )
        return target.read_bytes()


def to_int8_cpu(onnx_bytes: bytes) -> bytes:
    """ONNX Runtime's dynamic INT8 quantization of the MatMul weights, per output channel; activations are
    quantized per batch at run time, so no calibration images are needed.

    Measured on real photographs (benchmarks/precision.py, benchmarks/RESULTS.md) against static per-tensor Q/DQ
    with calibrated activation ranges: dynamic per-channel was both faster on ONNX Runtime's CPU kernels and
    closer to float32 (ViT activations have outliers that one static range per tensor clips or coarsens).
    Convolutions stay float32: ONNX Runtime's dynamic ConvInteger ran convolutional towers (MobileCLIP, ConvNeXt,
    EfficientNet) 4-8x slower than float32, and a ViT's patch embedding faster in float32 too
    (benchmarks/students.py).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _check_float32(onnx_bytes)
    with tempfile.TemporaryDirectory(prefix="dgs-int8-cpu-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model.int8-cpu.onnx"
        source.write_bytes(onnx_bytes)
        with _quiet():
            quantize_dynamic(os.fspath(source), os.fspath(target), op_types_to_quantize=["MatMul"],
                             per_channel=True, weight_type=QuantType.QInt8)
        return target.read_bytes()


CONVERSIONS = {
    "fp16": lambda onnx_bytes, calibration: to_fp16(onnx_bytes, calibration),
    "int8": lambda onnx_bytes, calibration: to_int8(onnx_bytes, calibration),
    "int8-cpu": lambda onnx_bytes, calibration: to_int8_cpu(onnx_bytes),
}
REDUCED_PRECISIONS = tuple(CONVERSIONS)


def convert(onnx_bytes: bytes, precision: str, calibration: np.ndarray | None = None) -> bytes:
    """The ``precision`` variant (``fp16``, ``int8`` or ``int8-cpu``) of a float32 graph; ``calibration`` is the
    preprocessed image batch that ``int8`` needs and ``fp16`` uses."""
    if precision not in CONVERSIONS:
        raise ExportError(f"precision {precision!r} is not a conversion (expected one of {REDUCED_PRECISIONS})")
    return CONVERSIONS[precision](onnx_bytes, calibration)
