"""Reduced-precision conversions of the tiny detector's exported graph, run by real ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from conftest import write_image  # noqa: E402
from dgs_export.onnx_export import ExportError, export_onnx  # noqa: E402
from dgs_export.precision import (  # noqa: E402
    convert,
    load_calibration_images,
    to_int8_cpu,
)
from dgs_sdk import PreprocessSpec  # noqa: E402
from dgs_sdk.preprocess import preprocess_batch  # noqa: E402
from dgs_trainer.samples import photo_crops  # noqa: E402

pytest.importorskip("modelopt.onnx.quantization", reason='needs NVIDIA Model Optimizer: pip install "dgs[quantize]"')


def ort_run(onnx_bytes: bytes, batch: np.ndarray, precision: str = "fp32") -> np.ndarray:
    """The graph's logits on ONNX Runtime's CPU provider, at the level the SDK runs ``precision`` there."""
    import onnxruntime as ort

    from dgs_sdk.backends.onnxruntime import optimization_level

    options = ort.SessionOptions()
    options.graph_optimization_level = optimization_level(ort, precision, on_cuda=False)
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (image,), (logit,) = session.get_inputs(), session.get_outputs()
    assert (image.name, image.type, logit.name, logit.type) == ("image", "tensor(float)", "logit", "tensor(float)")
    return session.run(["logit"], {"image": batch})[0]


def crops(photos: dict[str, np.ndarray], count: int = 24) -> list[np.ndarray]:
    return photo_crops(list(photos.values()), count)


@pytest.fixture(scope="module")
def tiny_graph(tiny_model) -> bytes:
    return export_onnx(tiny_model, 224)


@pytest.fixture(scope="module")
def batch(photos) -> np.ndarray:
    return preprocess_batch(crops(photos), PreprocessSpec.clip())


@pytest.fixture(scope="module")
def variants(tiny_graph, batch) -> dict[str, bytes]:
    return {precision: convert(tiny_graph, precision, batch) for precision in ("fp16", "int8", "int8-cpu")}


def test_calibration_uses_the_sdk_preprocessing(tmp_path, photos):
    """Calibration batches are what the Detector feeds: preprocess_batch, for both transforms; unreadable files
    are passed over and the paths used are returned."""
    names = list(photos)
    paths = [str(write_image(tmp_path / f"{name}.png", photos[name])) for name in names]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    for spec in (PreprocessSpec.clip(), PreprocessSpec.patch_select()):
        batch, used = load_calibration_images([str(tmp_path / "broken.jpg"), *paths], spec, limit=100)
        assert used == paths
        np.testing.assert_array_equal(batch, preprocess_batch([photos[n] for n in names], spec))
    batch, used = load_calibration_images(paths, PreprocessSpec.clip(), limit=3)
    assert len(batch) == 3 and used == [paths[0], paths[2], paths[5]]  # spread over the list


def test_every_variant_keeps_the_interface_and_runs(tiny_graph, variants, batch):
    reference = ort_run(tiny_graph, batch)
    for precision, onnx_bytes in variants.items():
        model = onnx.load_from_string(onnx_bytes)
        onnx.checker.check_model(model)
        assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, precision  # what packages allow
        logits = ort_run(onnx_bytes, batch, precision)
        assert logits.shape == reference.shape and np.all(np.isfinite(logits)), precision
        assert not np.array_equal(logits, reference), f"{precision} computes exactly float32's logits"
    kinds = {p: {node.op_type for node in onnx.load_from_string(b).graph.node} for p, b in variants.items()}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds["int8"]
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= kinds["int8-cpu"]
    for precision in ("fp16", "int8"):  # int8's unquantized nodes are FP16 too, for a strongly typed TensorRT
        assert "Cast" in kinds[precision] and onnx.TensorProto.FLOAT16 in {
            t.data_type for t in onnx.load_from_string(variants[precision]).graph.initializer
        }, precision


def test_variants_stay_close_to_float32(tiny_graph, variants, batch):
    """Bounds measured on these crops (the tiny model's head is scaled 20x, so logits spread over about +-10):
    fp16 within 0.02 in logit (measured 0.008); int8 Q/DQ within 2 (1.1); int8-cpu, whose activations are
    quantized per batch tensor, keeps the order of the images (rank correlation 0.98 measured) and is within 5
    (3.8)."""
    from scipy.stats import spearmanr

    reference = ort_run(tiny_graph, batch)
    fp16 = ort_run(variants["fp16"], batch, "fp16")
    assert np.abs(fp16 - reference).max() < 0.02
    int8 = ort_run(variants["int8"], batch, "int8")
    assert np.abs(int8 - reference).max() < 2.0 and spearmanr(int8, reference).statistic > 0.95
    int8_cpu = ort_run(variants["int8-cpu"], batch, "int8-cpu")
    assert np.abs(int8_cpu - reference).max() < 5.0 and spearmanr(int8_cpu, reference).statistic > 0.9


def test_conversions_refuse_what_they_cannot_convert(tiny_graph, variants):
    with pytest.raises(ExportError, match="already quantized"):
        to_int8_cpu(variants["int8-cpu"])
    with pytest.raises(ExportError, match="calibration images"):
        convert(tiny_graph, "int8", None)
    with pytest.raises(ExportError, match="not a conversion"):
        convert(tiny_graph, "int4")


FP16_SCRIPT = """
import sys
import numpy as np
from dgs_sdk import Detector
detector = Detector(sys.argv[1], device="cpu", precision="fp16")
print(detector.precision, detector.predict(np.full((64, 64, 3), 128, np.uint8)).probability)
"""
ALL_LEVEL_SCRIPT = """
import sys
import onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
ort.InferenceSession(open(sys.argv[1], "rb").read(), options, providers=["CPUExecutionProvider"])
print("created")
"""


def test_the_sdk_runs_an_fp16_variant_on_cpu_where_onnx_runtime_alone_would_crash(tmp_path, variants):
    """An fp16-only package scores on the CPU through the Detector (in a child process, so that a crash is a
    failure, not the end of the test run); the same graph at ORT_ENABLE_ALL kills its process (SIGSEGV), which is
    why the SDK runs it at `FP16_CPU_LEVEL`."""
    import subprocess
    import sys

    from dgs_sdk import Manifest, write_package
    from dgs_sdk.package import Variant

    manifest = Manifest(preprocess=PreprocessSpec.clip(), variants={"fp16": Variant("fp16", "model.fp16.onnx")})
    package = write_package(tmp_path / "fp16.dgs", manifest, {"model.fp16.onnx": variants["fp16"]})
    sdk = subprocess.run([sys.executable, "-c", FP16_SCRIPT, str(package)], capture_output=True, text=True)
    assert sdk.returncode == 0, sdk.stderr
    precision, probability = sdk.stdout.split()
    assert precision == "fp16" and 0.0 <= float(probability) <= 1.0
    graph = tmp_path / "model.fp16.onnx"
    graph.write_bytes(variants["fp16"])
    alone = subprocess.run([sys.executable, "-c", ALL_LEVEL_SCRIPT, str(graph)], capture_output=True, text=True)
    assert alone.returncode == -11, (
        f"ONNX Runtime no longer crashes on FP16 graphs at ORT_ENABLE_ALL (exit {alone.returncode}): "
        "FP16_CPU_LEVEL in dgs_sdk.backends.onnxruntime can be raised"
    )
