"""`dgs export`: a training run becomes a verified package whose Detector agrees with `dgs eval`."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from conftest import tiny_config  # noqa: E402
from dgs_export.run_export import ExportConfig, export_run  # noqa: E402
from dgs_sdk import Detector, ModelPackage  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_trainer.eval_run import EvalConfig, evaluate_run  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402


@pytest.fixture(scope="module")
def dgs_run(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("runs") / "dgs run"
    return fit(tiny_config(dataset, out, method="dgs"), progress=False)


def test_package_of_a_run_scores_like_the_evaluation(tmp_path, dgs_run, dataset):
    report = evaluate_run(EvalConfig(run=str(dgs_run), data=str(dataset), device="cpu", workers=0, calibrate=True),
                          progress=False)
    package = export_run(ExportConfig(run=str(dgs_run), out=str(tmp_path / "model.dgs")))
    manifest = ModelPackage.load(package).manifest
    assert manifest.threshold == pytest.approx(report["threshold"]) and manifest.threshold_source == "calibrated"
    assert manifest.architecture["arch"] == "dgs-tiny-vit" and manifest.architecture["lora_merged"]
    assert manifest.provenance["method"] == "dgs" and manifest.preprocess.transform == "patch-select"
    paths = sorted(report["probabilities"])
    results = Detector(package).predict(paths)
    for path, result in zip(paths, results, strict=True):
        assert result.ok, result.error
        assert result.probability == pytest.approx(report["probabilities"][path], abs=1e-4), path
    raw_manifest = json.loads(zipfile.ZipFile(package).read("manifest.json"))
    assert raw_manifest["model"]["output_meaning"] == "logit of 'fake'"


def test_fixed_batch_export_runs_any_number_of_images(tmp_path, dgs_run, dataset):
    dynamic = export_run(ExportConfig(run=str(dgs_run), out=str(tmp_path / "dynamic.dgs")))
    fixed = export_run(ExportConfig(run=str(dgs_run), out=str(tmp_path / "fixed.dgs"), batch="3"))
    images = sorted(str(p) for p in dataset.rglob("*.png"))[:7]
    a = [r.probability for r in Detector(dynamic, batch_size=5).predict(images)]
    b = [r.probability for r in Detector(fixed, batch_size=5).predict(images)]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_cli_export_and_its_errors(tmp_path, dgs_run, dataset):
    runner = CliRunner()
    out = tmp_path / "cli.dgs"
    result = runner.invoke(main, ["export", str(dgs_run), "--out", str(out), "--calib-data", str(dataset / "blocky")])
    assert result.exit_code == 0, result.output
    provenance = ModelPackage.load(out).manifest.provenance
    assert provenance["parity_images"].endswith("from blocky")
    assert provenance["parity"]["max_abs_probability_diff"] < 1e-4
    assert "parity with torch" in result.output
    not_a_run = runner.invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "x.dgs")])
    assert not_a_run.exit_code == 2 and "not a finished training run" in not_a_run.output
    bad_batch = runner.invoke(main, ["export", str(dgs_run), "--out", str(tmp_path / "y.dgs"), "--batch", "0"])
    assert bad_batch.exit_code == 2 and "--batch must be" in bad_batch.output
    assert "Traceback" not in result.output + not_a_run.output + bad_batch.output
