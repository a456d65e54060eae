"""The accuracy gate: figures, the decision, which images calibrate and which score, and `dgs export --precision`
on a trained tiny run writing the variants that pass and refusing a broken one."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from conftest import tiny_config, write_image  # noqa: E402
from dgs_export import precision as precision_module  # noqa: E402
from dgs_export.accuracy_gate import GateConfig, format_table, score_variant  # noqa: E402
from dgs_export.precision import choose_image_sets  # noqa: E402
from dgs_export.run_export import ExportConfig, GateError, export_run  # noqa: E402
from dgs_sdk import Detector, ModelPackage  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_trainer.eval_run import EvalConfig, evaluate_run  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402


def test_score_variant_decides_on_auc_drop_and_agreement():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 100)
    reference = rng.normal(2.0 * labels - 1.0, 1.0)
    config = GateConfig(max_auc_drop=0.005, min_agreement=0.99)
    same = score_variant("int8-cpu", reference, reference + 1e-4, labels, 0.5, config)
    assert same.passed and same.figures["agreement"] == 1.0 and same.figures["auc_drop"] == pytest.approx(0, abs=1e-3)
    assert same.figures["max_abs_delta_p"] < 1e-4 and same.figures["fp32_auc"] > 0.8
    shifted = score_variant("int8", reference, reference + 0.5, labels, 0.5, config)  # same ranking, labels move
    assert not shifted.passed and shifted.figures["auc_drop"] == pytest.approx(0, abs=1e-12)
    assert any("agree with float32" in reason for reason in shifted.reasons)
    noisy = score_variant("fp16", reference, reference + rng.normal(0, 1.5, 200), labels, 0.5, config)
    assert not noisy.passed and any("AUC" in reason for reason in noisy.reasons)
    broken = score_variant("fp16", reference, np.full(200, np.nan), labels, 0.5, config)
    assert not broken.passed and broken.reasons == ["its logits are not all finite numbers"]
    table = format_table([same, shifted])
    assert "int8-cpu" in table and "FAIL" in table and "int8 not written: labels agree" in table


def test_a_label_flipped_next_to_the_threshold_is_a_near_tie_not_a_failure():
    """One image of 32 at p = threshold + 0.001 flips under a 0.002 change (as FP16 rounding does): reported,
    not counted; the same change on a clearly decided image fails the variant."""
    from dgs_export.accuracy_gate import NEAR_TIE

    labels = np.repeat([0, 1], 16)
    p = np.where(labels == 1, 0.9, 0.1)
    p[-1] = 0.5 + 0.001
    logit = np.log(p / (1 - p))
    moved = logit.copy()
    moved[-1] = np.log((0.5 - 0.001) / (0.5 + 0.001))
    score = score_variant("fp16", logit, moved, labels, 0.5, GateConfig())
    assert score.passed and score.figures["agreement"] == 1.0 and score.figures["near_tie_flips"] == 1
    table = format_table([score])
    assert f"fp16: 1 label(s) flipped within {NEAR_TIE:g} of the threshold" in table
    assert "32 images are few for these bounds" in table
    decided = logit.copy()
    decided[0] = 5.0  # a clear "real" (p 0.1) turned into a clear "fake"
    failed = score_variant("fp16", logit, decided, labels, 0.5, GateConfig())
    assert not failed.passed and failed.figures["agreement"] == pytest.approx(30 / 31)


def test_calibration_and_gate_images_are_kept_apart(tmp_path, dataset, photo_folder):
    run = SimpleNamespace(data=str(dataset), split=None, val=None, val_split=None)
    every = sorted(str(p) for p in dataset.rglob("*.png"))
    # No validation set, no --calib-data: the training images are split between the two, every other one.
    sets = choose_image_sets(["int8-cpu"], run)
    assert sorted(sets.calibration + [s.path for s in sets.gate]) == every and not sets.overlap
    assert not set(sets.calibration) & {s.path for s in sets.gate} and {s.label for s in sets.gate} == {0, 1}
    # Labelled --calib-data and no validation set: split between the two as well.
    sets = choose_image_sets(["int8-cpu"], run, calib_data=str(dataset / "blocky"))
    assert len(sets.calibration) == len(sets.gate) == 6 and not set(sets.calibration) & {s.path for s in sets.gate}
    assert "--calib-data" in sets.gate_source and "--calib-data" in sets.calibration_source
    # Unlabelled --calib-data calibrates; the training images score.
    sets = choose_image_sets(["int8-cpu"], run, calib_data=str(photo_folder))
    assert len(sets.calibration) == 4 and all(p.startswith(str(photo_folder)) for p in sets.calibration)
    assert sorted(s.path for s in sets.gate) == every and "training data" in sets.gate_source
    # A validation set scores; the training images, less any it shares, calibrate, at most calib_images of them.
    val = tmp_path / "val"
    for i, sample in enumerate(sorted(dataset.rglob("*.png"))[:4]):
        write_image(val / ("0_real" if "0_real" in str(sample) else "1_fake") / f"{i}.png", np.zeros((64, 64, 3),
                                                                                                   np.uint8))
    run.val = str(val)
    sets = choose_image_sets(["int8-cpu"], run, calib_images=5, gate_images=3)
    assert len(sets.gate) == 3 and all(s.path.startswith(str(val)) for s in sets.gate)
    assert len(sets.calibration) == 5 and set(sets.calibration) <= set(every)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, dataset):
    """A tiny DGS-Net run with its threshold calibrated on its data (one epoch of training scores every image
    alike; the calibrated threshold is where fp32's labels divide them)."""
    out = tmp_path_factory.mktemp("runs") / "gate run ñ"
    run = fit(tiny_config(dataset, out, method="dgs"), progress=False)
    evaluate_run(EvalConfig(run=str(run), data=str(dataset), device="cpu", workers=0, calibrate=True), progress=False)
    return run


def test_export_writes_the_variants_that_pass(tmp_path, trained_run, photo_folder):
    pytest.importorskip("modelopt.onnx.quantization", reason='fp16 and int8 need pip install "dgs[quantize]"')
    out = tmp_path / "all variants.dgs"
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out), "--precision",
                                       "int8-cpu,fp32,fp16,int8", "--calib-data", str(photo_folder)])
    assert "accuracy gate on 24 labelled images" in result.output and "calibration: 4 images from" in result.output
    package = ModelPackage.load(out)
    variants = package.manifest.variants
    refused = package.manifest.provenance["precision_variants"]["refused"]
    assert result.exit_code == (1 if refused else 0), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "fp16" in variants and "fp16" not in refused  # FP16 moves probabilities by about 1e-4 here
    assert list(variants) == [p for p in ("fp32", "fp16", "int8", "int8-cpu") if p not in refused]
    assert variants["fp32"].accuracy == {}
    for precision in set(variants) - {"fp32"}:
        figures = variants[precision].accuracy
        assert figures["images"] == 24 and figures["agreement"] >= 0.99 and figures["auc_drop"] <= 0.005
        assert figures["threshold"] == package.manifest.threshold and figures["fp32_auc"] is not None
    assert variants["fp16"].accuracy["ort_level"] != "ORT_ENABLE_ALL"  # the level the SDK runs fp16 at on CPU
    assert variants["fp16"].accuracy["max_abs_delta_p"] < 1e-2
    images = sorted(str(p) for p in photo_folder.rglob("*.*"))
    fp32 = [r.probability for r in Detector(out, precision="fp32").predict(images)]
    fp16 = [r.probability for r in Detector(out, precision="fp16").predict(images)]
    np.testing.assert_allclose(fp16, fp32, atol=1e-2)


def damaged_int8_cpu(onnx_bytes: bytes, calibration) -> bytes:
    """The real int8-cpu conversion, then the sign of its head's INT8 weights flipped: fake becomes real."""
    model = onnx.load_from_string(precision_module.to_int8_cpu(onnx_bytes))
    head = max((t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and "head" in t.name),
               key=lambda t: len(t.raw_data))
    weights = onnx.numpy_helper.to_array(head)
    head.CopyFrom(onnx.numpy_helper.from_array(-np.maximum(weights, -127), head.name))
    return model.SerializeToString()


@pytest.fixture
def damaged(monkeypatch):
    monkeypatch.setitem(precision_module.CONVERSIONS, "int8-cpu", damaged_int8_cpu)


def test_export_refuses_a_broken_variant(tmp_path, trained_run, damaged):
    """A variant whose weights are damaged after conversion is scored, shown and left out; exit code 1."""
    out = tmp_path / "model.dgs"
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(out), "--precision",
                                       "fp32,int8-cpu", "--min-agreement", "0.95"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "FAIL" in result.output and "int8-cpu not written: labels agree" in result.output
    assert "failed the accuracy gate" in result.output and "Traceback" not in result.output
    manifest = ModelPackage.load(out).manifest
    assert list(manifest.variants) == ["fp32"]
    assert "int8-cpu" in manifest.provenance["precision_variants"]["refused"]


def test_nothing_is_written_when_no_asked_variant_passes(tmp_path, trained_run, damaged):
    out = tmp_path / "model.dgs"
    with pytest.raises(GateError, match="no variant passed the accuracy gate") as error:
        export_run(ExportConfig(run=str(trained_run), out=str(out), precisions=("int8-cpu",), min_agreement=0.95))
    assert "int8-cpu" in str(error.value) and not out.exists()


def test_unknown_precision_is_an_error(tmp_path, trained_run):
    result = CliRunner().invoke(main, ["export", str(trained_run), "--out", str(tmp_path / "x.dgs"),
                                       "--precision", "fp32,int4"])
    assert result.exit_code == 2 and "'int4' is not a precision" in result.output
