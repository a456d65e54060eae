"""`dgs eval MODEL.dgs`: a package scored as deployed gives the run's table and report, without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from conftest import tiny_config  # noqa: E402
from dgs_export.run_export import ExportConfig, export_run  # noqa: E402
from dgs_sdk import DgsError, ModelPackage  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_sdk.evaluation import PackageEvalConfig, evaluate_package  # noqa: E402
from dgs_sdk.metrics import format_table  # noqa: E402
from dgs_trainer.eval_run import EvalConfig, evaluate_run  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METRICS = ("acc", "real_acc", "fake_acc", "ap", "auc")


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset):
    return fit(tiny_config(dataset, tmp_path_factory.mktemp("runs") / "probe run", method="probe"), progress=False)


@pytest.fixture(scope="module")
def package(tmp_path_factory, run):
    return export_run(ExportConfig(run=str(run), out=str(tmp_path_factory.mktemp("packages") / "probe ñ.dgs")))


@pytest.fixture(scope="module")
def data_with_a_broken_image(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("data") / "with broken"
    shutil.copytree(dataset, root)
    (root / "blocky" / "1_fake" / "broken.png").write_text("this is not a PNG")
    return root


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_package_report_matches_the_run_it_was_exported_from(run, package, dataset):
    by_run = evaluate_run(EvalConfig(run=str(run), data=str(dataset), device="cpu", workers=0), progress=False)
    by_package = evaluate_package(PackageEvalConfig(model=str(package), data=str(dataset), device="cpu"))
    assert set(by_run) - {"run", "tta", "checkpoint"} <= set(by_package)
    assert by_package["threshold"] == by_run["threshold"] and by_package["threshold_source"] == "default"
    assert list(by_package["metrics"]) == list(by_run["metrics"]) == ["blocky", "smooth", "mean"]
    for generator, expected in by_run["metrics"].items():
        got = by_package["metrics"][generator]
        assert got["count"] == expected["count"]
        for key in METRICS:
            assert got[key] == pytest.approx(expected[key], abs=1e-4), (generator, key)
    assert [line.split()[:2] for line in format_table(by_package["metrics"]).splitlines()] == [
        line.split()[:2] for line in format_table(by_run["metrics"]).splitlines()]
    assert by_package["probabilities"].keys() == by_run["probabilities"].keys()
    for path, p in by_run["probabilities"].items():
        assert by_package["probabilities"][path] == pytest.approx(p, abs=1e-4), path
    identity = by_package["package"]
    loaded = ModelPackage.load(package)
    assert identity == {"path": str(package), "precision": "fp32", "file": "model.onnx",
                        "sha256": loaded.variant_sha256("fp32")}
    assert (by_package["backend"], by_package["device"]) == ("onnxruntime", "cpu")
    assert by_package["unreadable"] == 0 and by_package["errors"] == {}


def test_cli_prints_the_table_and_writes_the_report(tmp_path, package, data_with_a_broken_image):
    out = tmp_path / "report.json"
    result = invoke("eval", package, "--data", data_with_a_broken_image, "--device", "cpu", "--precision", "fp32",
                    "--threshold", "0.4", "--json", out, "--batch-size", "5", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert f"{package}: fp32 variant (model.onnx, sha256 " in result.output and "onnxruntime, cpu" in result.output
    assert "blocky" in result.output and "mean" in result.output and "threshold 0.4000 (given)" in result.output
    broken = data_with_a_broken_image / "blocky" / "1_fake" / "broken.png"
    assert f"1 unreadable images were skipped (e.g. {broken}" in result.output
    report = json.loads(out.read_text())
    assert report["unreadable"] == 1 and list(report["errors"]) == [str(broken)]
    assert report["probabilities"][str(broken)] is None
    assert report["metrics"]["blocky"]["count"] == 12 and report["metrics"]["mean"]["count"] == 24
    assert report["threshold"] == 0.4 and report["package"]["precision"] == "fp32"


def test_a_package_is_evaluated_where_torch_cannot_be_imported(tmp_path, run, package, data_with_a_broken_image):
    script = textwrap.dedent("""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in ("torch", "torchvision", "open_clip"):
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

        sys.meta_path.insert(0, NoTorch())
        from dgs_sdk.cli import main

        main(sys.argv[1:])
    """)
    env = {"PYTHONPATH": f"{REPO / 'sdk'}:{REPO / 'trainer'}:{REPO / 'export'}", "PATH": "/usr/bin:/bin"}
    out = tmp_path / "report.json"
    args = [sys.executable, "-c", script, "eval"]
    done = subprocess.run([*args, package, "--data", data_with_a_broken_image, "--json", out, "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mean" in done.stdout and "1 unreadable images were skipped" in done.stderr
    assert json.loads(out.read_text())["metrics"]["mean"]["count"] == 24
    needs_torch = subprocess.run([*args, run, "--data", data_with_a_broken_image], capture_output=True, text=True,
                                 env=env, timeout=120)
    assert needs_torch.returncode == 2, needs_torch.stderr
    assert "Error: evaluating a training run needs the train extra: pip install 'dgs[train]'" in needs_torch.stderr
    assert "Traceback" not in needs_torch.stderr


def test_bad_inputs_give_clear_errors(tmp_path, run, package, dataset):
    missing = invoke("eval", package, "--data", tmp_path / "nowhere")
    assert missing.exit_code == 2 and f"Error: {tmp_path / 'nowhere'}: data root not found" in missing.output
    notes = tmp_path / "notes.dgs"
    notes.write_text("not a zip")
    not_a_package = invoke("eval", notes, "--data", dataset)
    assert not_a_package.exit_code == 2 and f"Error: {notes}: not a dgs model package" in not_a_package.output
    unknown = invoke("eval", package, "--data", dataset, "--precision", "fp8")
    assert unknown.exit_code == 2 and "'fp8' is not one of 'auto', 'fp32', 'fp16', 'int8', 'int8-cpu'" in (
        unknown.output)
    absent = invoke("eval", package, "--data", dataset, "--precision", "int8-cpu")
    assert absent.exit_code == 2 and "has no 'int8-cpu' variant (it has fp32)" in absent.output
    with pytest.raises(DgsError, match="precision 'fp8' is unknown"):
        evaluate_package(PackageEvalConfig(model=str(package), data=str(dataset), precision="fp8"))
    calibrate = invoke("eval", package, "--data", dataset, "--calibrate")
    assert calibrate.exit_code == 2 and "--calibrate stores a threshold in a training run" in calibrate.output
    assert f"{package} is a model package" in calibrate.output
    tta = invoke("eval", package, "--data", dataset, "--tta", "2")
    assert tta.exit_code == 2 and "--tta averages a training run" in tta.output
    precision = invoke("eval", run, "--data", dataset, "--precision", "fp32")
    assert precision.exit_code == 2 and "--precision picks a model package's variant" in precision.output
    assert f"{run} is a training run" in precision.output
    json_folder = invoke("eval", package, "--data", dataset, "--json", tmp_path / "no folder" / "r.json")
    assert json_folder.exit_code == 2 and "its folder does not exist" in json_folder.output
