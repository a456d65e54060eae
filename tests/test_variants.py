"""Choosing and running a package's precision variant: Detector, `dgs scan --precision`, `dgs info MODEL`."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import variant_package, write_image
from dgs_sdk import BackendUnavailable, Detector, ModelPackageError
from dgs_sdk.backends import choose_backend
from dgs_sdk.backends.onnxruntime import OnnxRuntimeBackend
from dgs_sdk.cli import main
from dgs_sdk.package import read_manifest

SIZE = 32


@pytest.fixture
def grey(tmp_path):
    return write_image(tmp_path / "grey.png", np.full((48, 48, 3), 200, np.uint8))


def logit_of(detector: Detector, image) -> float:
    return detector.predict(image).logit


def test_auto_runs_the_fastest_variant_the_backend_runs_well(tmp_path, grey):
    path = variant_package(tmp_path / "m.dgs", ("fp32", "int8", "int8-cpu"), size=SIZE)  # logits x1, x2, x3
    fp32 = Detector(path, device="cpu", precision="fp32")
    auto = Detector(path, device="cpu")
    assert auto.precision == "int8-cpu" and list(auto.package.members) == ["model.int8-cpu.onnx"]
    prediction = auto.predict(grey)
    assert prediction.variant == "int8-cpu"
    assert prediction.logit == pytest.approx(3 * logit_of(fp32, grey), rel=1e-5)
    assert Detector(path, device="cpu", precision="int8").predict(grey).logit == pytest.approx(
        2 * logit_of(fp32, grey), rel=1e-5)
    assert "onnxruntime on cpu, int8-cpu" in repr(auto)


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        (("fp32",), "fp32"),
        (("fp16", "fp32"), "fp32"),  # fp16 is slower than fp32 on CPU
        (("int8", "fp16"), "fp16"),  # Q/DQ for TensorRT is slower still on CPU
        (("int8",), "int8"),
    ],
)
def test_on_cpu_the_rule_is_int8_cpu_then_fp32_then_fp16_then_int8(tmp_path, variants, expected):
    manifest = read_manifest(variant_package(tmp_path / "m.dgs", variants, size=SIZE))
    assert choose_backend("onnxruntime", manifest, "cpu") == (OnnxRuntimeBackend, expected)


def test_a_variant_the_package_lacks_is_a_clear_error(tmp_path, grey):
    path = variant_package(tmp_path / "m.dgs", ("fp32", "int8-cpu"), size=SIZE)
    with pytest.raises(ModelPackageError, match=r"m.dgs: has no 'int8' variant \(it has fp32, int8-cpu\)"):
        Detector(path, precision="int8")
    with pytest.raises(BackendUnavailable, match="precision 'fp64' is unknown"):
        Detector(path, precision="fp64")


def test_scan_runs_the_asked_variant_and_says_which(tmp_path, grey):
    path = variant_package(tmp_path / "m.dgs", ("fp32", "int8-cpu"), size=SIZE)
    runner = CliRunner()
    result = runner.invoke(main, ["scan", str(grey), "-m", str(path), "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "with onnxruntime on cpu, fp32" in result.stderr
    result = runner.invoke(main, ["scan", str(grey), "-m", str(path), "--device", "cpu"])
    assert "with onnxruntime on cpu, int8-cpu" in result.stderr
    result = runner.invoke(main, ["scan", str(grey), "-m", str(path), "--precision", "fp16"])
    assert result.exit_code == 2 and "has no 'fp16' variant (it has fp32, int8-cpu)" in result.stderr
    assert "Traceback" not in result.output


def test_info_lists_the_variants_their_figures_and_what_auto_runs_here(tmp_path):
    path = variant_package(tmp_path / "m.dgs", ("fp32", "int8-cpu"), size=SIZE)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    (fp32,) = [line for line in lines if line.strip().startswith("fp32")]
    (int8,) = [line for line in lines if line.strip().startswith("int8-cpu")]
    assert "model.onnx" in fp32 and "vs fp32" not in fp32
    assert "model.int8-cpu.onnx" in int8
    assert "vs fp32: AUC 0.9810 (fp32 0.9840), max |dp| 0.012, labels as fp32 99.5%, on 200 images" in int8
    assert "here, auto runs: int8-cpu with onnxruntime" in result.output


def test_info_on_a_damaged_package_names_it(tmp_path):
    bad = tmp_path / "bad.dgs"
    bad.write_bytes(b"not a zip")
    result = CliRunner().invoke(main, ["info", str(bad)])
    assert result.exit_code == 2 and "bad.dgs: not a dgs model package" in result.stderr
