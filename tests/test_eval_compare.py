"""`dgs eval TARGET --compare OTHER`: several runs and packages scored on the same images, in one table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from conftest import tiny_config  # noqa: E402
from dgs_export.run_export import ExportConfig, export_run  # noqa: E402
from dgs_sdk import DgsError  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_sdk.comparison import METRICS, compare_reports, detector_labels, format_comparison  # noqa: E402
from dgs_sdk.evaluation import PackageEvalConfig, evaluate_package  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset):
    return fit(tiny_config(dataset, tmp_path_factory.mktemp("runs") / "teacher run", method="probe"), progress=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run):
    """The run's own package, in a folder with unicode in its name."""
    return export_run(ExportConfig(run=str(run), out=str(tmp_path_factory.mktemp("packages") / "student ñ.dgs")))


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def table_of(output: str) -> dict[str, list[str]]:
    """The comparison table's rows by their first cell (``generator`` for the column headers)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("generator"))
    return {line.split()[0]: line.split() for line in lines[start:] if not line.startswith("figures in percent")}


def test_two_packages_side_by_side(tmp_path, clip_package, patch_package, dataset):
    out = tmp_path / "both.json"
    result = invoke("eval", clip_package, "--compare", patch_package, "--data", dataset, "--device", "cpu",
                    "--json", out, "--no-progress")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{clip_package.name:<21}  {clip_package}: fp32 variant (model.onnx, sha256 ")
    assert lines[0].endswith("on onnxruntime, cpu") and lines[1].lstrip().startswith("threshold 0.5000 (default)")
    assert lines[2].startswith(f"{patch_package.name}  {patch_package}: fp32 variant")
    assert f"- {clip_package.name} -" in lines[5] and f"- {patch_package.name} -" in lines[5]
    assert max(len(line) for line in lines[5:]) <= 120
    rows = table_of(result.output)
    assert rows["generator"] == ["generator", "count", "AUC", "acc", "AP", "AUC", "ΔAUC", "acc", "AP"]
    assert list(rows)[1:] == ["blocky", "smooth", "mean"] and rows["mean"][1] == "24"

    both = json.loads(out.read_text())
    assert set(both) == {"detectors", "comparison"}
    clip, patch = both["detectors"]
    single = evaluate_package(PackageEvalConfig(model=str(clip_package), data=str(dataset), device="cpu"))
    assert set(clip) == set(single) and clip["metrics"] == single["metrics"]
    assert (clip["package"]["path"], patch["package"]["path"]) == (str(clip_package), str(patch_package))
    assert clip["probabilities"].keys() == patch["probabilities"].keys()
    assert any(abs(clip["probabilities"][p] - patch["probabilities"][p]) > 1e-3 for p in clip["probabilities"])
    comparison = both["comparison"]
    assert comparison["labels"] == [clip_package.name, patch_package.name]
    assert comparison["reference"] == clip_package.name
    assert list(comparison["delta"]) == ["blocky", "smooth", "mean"]
    for generator, by_label in comparison["delta"].items():
        delta = by_label[patch_package.name]
        for key in METRICS:
            assert delta[key] == pytest.approx(patch["metrics"][generator][key] - clip["metrics"][generator][key])
        # the table shows each detector's figures and the difference, in percent
        row = rows[generator]
        assert row[2:6] + row[7:9] == [f"{100 * m[generator][k]:.2f}" for m in (clip["metrics"], patch["metrics"])
                                       for k in ("auc", "acc", "ap")]
        assert row[1] == str(clip["metrics"][generator]["count"])
        assert float(row[6]) == pytest.approx(100 * delta["auc"], abs=0.006)
    assert any(abs(by_label[patch_package.name]["auc"]) > 1e-3 for by_label in comparison["delta"].values())


def test_a_run_beside_its_exported_package(tmp_path, run, exported, dataset):
    out = tmp_path / "run and package.json"
    result = invoke("eval", run, "--compare", exported, "--data", dataset, "--device", "cpu", "--workers", "0",
                    "--json", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"teacher run    {run}: training run, scored with torch\n")
    assert f"student ñ.dgs  {exported}: fp32 variant" in result.output
    assert "ΔAUC: a detector's AUC minus teacher run's, in percentage points" in result.output
    teacher, student = json.loads(out.read_text())["detectors"]
    assert teacher["run"] == str(run) and student["package"]["path"] == str(exported)
    for generator, expected in teacher["metrics"].items():
        for key in METRICS:
            assert student["metrics"][generator][key] == pytest.approx(expected[key], abs=1e-4), (generator, key)
    for row in list(table_of(result.output).values())[1:]:
        assert row[6] == "0.00"


def test_three_detectors_and_equal_names(tmp_path, run, clip_package, patch_package, dataset):
    twin = tmp_path / "copy" / clip_package.name
    twin.parent.mkdir()
    shutil.copy(clip_package, twin)
    result = invoke("eval", clip_package, "--compare", twin, "--compare", patch_package, "--data", dataset,
                    "--device", "cpu", "--threshold", "0.3", "--no-progress")
    assert result.exit_code == 0, result.output
    reference = f"{clip_package.parent.name}/{clip_package.name}"
    assert result.output.startswith(f"{reference}  {clip_package}:")
    assert f"copy/{clip_package.name}" in result.output
    assert result.output.count("threshold 0.3000 (given)") == 3
    rows = table_of(result.output)
    assert rows["generator"].count("ΔAUC") == 2 and rows["generator"].count("AP") == 3
    assert all(row[6] == "0.00" for name, row in rows.items() if name != "generator")
    assert any(row[10] != "0.00" for name, row in rows.items() if name != "generator")
    assert max(len(line) for line in result.output.splitlines()[7:]) <= 120


def test_labels_and_the_table_width():
    assert detector_labels(["runs/big", "out/small.dgs"]) == ["big", "small.dgs"]
    assert detector_labels(["a/x/m.dgs", "b/x/m.dgs", "c/n.dgs"]) == ["a/x/m.dgs", "b/x/m.dgs", "n.dgs"]
    metrics = {g: {"count": 4, "acc": 0.5, "real_acc": 0.5, "fake_acc": 0.5, "ap": 0.75, "auc": 0.8}
               for g in ("gen", "mean")}
    reports = [{"run": f"runs/{i}", "threshold": 0.5, "threshold_source": "default", "oracle_threshold": None,
                "oracle_balanced_accuracy": None, "metrics": metrics, "probabilities": {"x.png": 0.1},
                "data": "d", "split": None} for i in range(5)]
    labels = [f"detector-{i}" for i in range(5)]
    head = next(line for line in format_comparison(reports, labels).splitlines() if line.startswith("generator"))
    assert "AP" not in head.split() and head.split().count("ΔAUC") == 4  # five detectors with AP: over 120
    assert "AP" in format_comparison(reports[:3], labels[:3])
    one_image_less = {**reports[1], "metrics": {**metrics, "gen": {**metrics["gen"], "count": 3}}}
    rows = table_of(format_comparison([reports[0], one_image_less], labels[:2]))
    assert rows["gen"][:2] == ["gen", "3-4"] and rows["mean"][:2] == ["mean", "4"]
    with pytest.raises(DgsError, match="detector-1 was scored on other images than detector-0"):
        compare_reports([reports[0], {**reports[1], "probabilities": {"y.png": 0.2}}], labels[:2])
    with pytest.raises(DgsError, match="one distinct label per report"):
        compare_reports(reports[:2], ["same", "same"])


def test_options_and_errors(tmp_path, monkeypatch, run, exported, clip_package, patch_package, dataset):
    one_kind = invoke("eval", run, "--compare", exported, "--data", dataset, "--device", "cpu", "--workers", "0",
                      "--precision", "fp32", "--tta", "2", "--no-progress")
    assert one_kind.exit_code == 0, one_kind.output
    assert "over 2 mosaic orders" in one_kind.output and f"{exported}: fp32 variant" in one_kind.output
    twin_run = shutil.copytree(run, tmp_path / "twin run")
    precision = invoke("eval", run, "--compare", twin_run, "--data", dataset, "--precision", "fp32")
    assert precision.exit_code == 2 and "--precision picks a model package's variant" in precision.output
    assert f"{run}, {twin_run} are all training runs" in precision.output
    tta = invoke("eval", clip_package, "--compare", patch_package, "--data", dataset, "--tta", "2")
    assert tta.exit_code == 2 and "--tta averages a training run" in tta.output
    assert f"{clip_package}, {patch_package} are all model packages" in tta.output
    calibrate = invoke("eval", run, "--compare", exported, "--data", dataset, "--calibrate")
    assert calibrate.exit_code == 2 and "Error: --calibrate takes one run, not several" in calibrate.output
    missing = invoke("eval", clip_package, "--compare", tmp_path / "nowhere.dgs", "--data", dataset)
    assert missing.exit_code == 2 and "nowhere.dgs" in missing.output and "does not exist" in missing.output
    monkeypatch.chdir(clip_package.parent)
    itself = invoke("eval", clip_package, "--compare", f"./{clip_package.name}", "--data", dataset)
    assert itself.exit_code == 2 and f"Error: ./{clip_package.name}: that is {clip_package} again" in (
        itself.output)
    over_package = invoke("eval", clip_package, "--compare", patch_package, "--data", dataset,
                          "--json", patch_package)
    assert over_package.exit_code == 2 and f"that is the model package {patch_package}" in over_package.output
    into_run = invoke("eval", clip_package, "--compare", run, "--data", dataset, "--json", run / "config.json")
    assert into_run.exit_code == 2 and "belongs to the run" in into_run.output


def test_without_compare_the_report_keeps_its_shape(tmp_path, clip_package, dataset):
    out = tmp_path / "single.json"
    result = invoke("eval", clip_package, "--data", dataset, "--device", "cpu", "--json", out, "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert "detectors" not in report and "comparison" not in report
    assert report["package"]["path"] == str(clip_package) and list(report["metrics"]) == ["blocky", "smooth", "mean"]
    assert "ΔAUC" not in result.output and result.output.splitlines()[1].split()[:2] == ["generator", "count"]


def test_robustness_sweep_of_a_run_and_its_package_agree(tmp_path, run, exported, dataset):
    """The run (torch) and its package (ONNX Runtime) see the same degraded images: the same crop of each image,
    the same JPEG bytes; their probabilities under every perturbation agree as their clean ones do."""
    out = tmp_path / "sweep.json"
    result = invoke("eval", run, exported, "--data", dataset, "--device", "cpu", "--workers", "0",
                    "--perturb", "jpeg:90,50", "--perturb", "crop:0.6", "--perturb", "resize:0.5", "--json", out,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("robustness: mean over generators, in percent, at each detector's threshold")
    sweep = [line.split("  ")[0].strip() for line in lines[start + 2:]]
    assert sweep == ["clean", "JPEG quality 90", "JPEG quality 50", "crop 60%", "resize x0.5"]
    both = json.loads(out.read_text())
    torch_report, package_report = both["detectors"]
    levels = [(e["perturbation"], e["level"]) for e in torch_report["robustness"]]
    assert levels == [("jpeg", "90"), ("jpeg", "50"), ("crop", "0.6"), ("resize", "0.5")]
    assert [(e["perturbation"], e["level"]) for e in package_report["robustness"]] == levels
    for a, b in zip(torch_report["robustness"], package_report["robustness"], strict=True):
        assert a["probabilities"].keys() == b["probabilities"].keys() == torch_report["probabilities"].keys()
        pa, pb = (np.array(list(e["probabilities"].values()), float) for e in (a, b))
        assert np.allclose(pa, pb, atol=1e-4), a["description"]
        assert a["metrics"]["mean"]["auc"] == pytest.approx(b["metrics"]["mean"]["auc"], abs=1e-6)
    # A perturbation changes the scores: no level gives the clean probabilities back
    clean = np.array(list(torch_report["probabilities"].values()), float)
    for entry in torch_report["robustness"]:
        assert not np.allclose(clean, np.array(list(entry["probabilities"].values()), float), atol=1e-6)


def test_perturb_errors_come_before_any_scoring(clip_package, dataset):
    for value, message in [("jpeg:101", "from 1 to 100"), ("noise:1", "'noise' is unknown"),
                           ("blur", "expected KIND:LEVEL")]:
        result = invoke("eval", clip_package, "--data", dataset, "--perturb", value, "--no-progress")
        assert result.exit_code == 2 and message in result.output and "evaluating" not in result.output
    twice = invoke("eval", clip_package, "--data", dataset, "--perturb", "jpeg:75", "--perturb", "jpeg:90,75")
    assert twice.exit_code == 2 and "--perturb jpeg:75 is given twice" in twice.output


def test_report_folder_from_the_command_line(tmp_path, clip_package, patch_package, dataset):
    pytest.importorskip("matplotlib")
    import cv2

    report_dir, json_out = tmp_path / "réport dir", tmp_path / "same.json"
    result = invoke("eval", clip_package, patch_package, "--data", dataset, "--device", "cpu", "--perturb", "blur:2",
                    "--report", report_dir, "--json", json_out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"report written to {report_dir}" in result.output
    assert json.loads((report_dir / "metrics.json").read_text()) == json.loads(json_out.read_text())
    figures = sorted(p.name for p in (report_dir / "figures").iterdir())
    assert figures == ["confusion.png", "histograms.png", "pr.png", "pr_generators.png", "robustness_blur.png",
                       "roc.png", "roc_generators.png"]
    for name in figures:
        image = cv2.imread(str(report_dir / "figures" / name))
        assert image is not None and image.std() > 10, name
        assert f"figures/{name}" in (report_dir / "report.md").read_text()
    robustness = (report_dir / "robustness.csv").read_text().splitlines()
    assert robustness[0].startswith("detector,perturbation,level,generator")
    assert any(",blur,2," in line for line in robustness)
    # A second report into the same folder replaces the first; a folder holding other files is refused before any
    # image is scored
    again = invoke("eval", clip_package, "--data", dataset, "--device", "cpu", "--report", report_dir, "--no-progress")
    assert again.exit_code == 0, again.output
    assert not (report_dir / "robustness.csv").exists()
    assert not (report_dir / "figures" / "robustness_blur.png").exists()
    assert patch_package.name not in (report_dir / "report.md").read_text()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    refused = invoke("eval", clip_package, "--data", dataset, "--report", other)
    assert refused.exit_code == 2 and f"{other}: is a folder that holds other files" in refused.output
    assert "evaluating" not in refused.output and (other / "todo.txt").read_text() == "mine"
    (tmp_path / "r").mkdir()
    both = invoke("eval", clip_package, "--data", dataset, "--report", tmp_path / "r", "--json", tmp_path / "r/m.json")
    assert both.exit_code == 2 and "it lies in the --report folder" in both.output
    assert not any((tmp_path / "r").iterdir())
    inside = invoke("eval", clip_package, "--data", dataset, "--report", dataset / "report")
    assert inside.exit_code == 2 and "lies inside the data root" in inside.output
