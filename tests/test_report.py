"""`dgs_sdk.report.write_report`: the folder `dgs eval --report` writes, over real images and real metrics."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dgs_sdk.comparison import compare_reports, detector_labels
from dgs_sdk.data import FAKE, Sample, discover_samples
from dgs_sdk.errors import DgsError, EvaluationError
from dgs_sdk.metrics import metrics_by_generator, oracle_threshold, probabilities_by_path

pytest.importorskip("matplotlib")

from dgs_sdk import figures  # noqa: E402
from dgs_sdk.report import (  # noqa: E402
    HEADING,
    ROBUSTNESS_COLUMNS,
    TABLE_COLUMNS,
    data_fingerprint,
    order_levels,
    write_report,
)

LONG_NAME = "stable-diffusion-xl-turbo-distilled-with-a-very-long-name ñ"


def make_data(root: Path, generators: dict[str, tuple[int, int]], seed: int = 0) -> list[Sample]:
    """Tiny random PNG files in the AIGIBench layout (``<generator>/{0_real,1_fake}``), listed by dgs_sdk.data."""
    rng = np.random.default_rng(seed)
    for generator, (real, fake) in generators.items():
        for folder, count in (("0_real", real), ("1_fake", fake)):
            for i in range(count):
                path = root / generator / folder / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                ok, encoded = cv2.imencode(".png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                assert ok
                path.write_bytes(encoded.tobytes())
    return discover_samples(root)


def make_report(samples: list[Sample], probabilities: np.ndarray, threshold: float, data: Path, *,
                package: str | None = None, run: str | None = None, robustness: list | None = None) -> dict:
    """An evaluation report of the shape `evaluate_package` / `evaluate_run` return, from the real metrics."""
    oracle, oracle_accuracy = oracle_threshold(samples, probabilities)
    common = {
        "data": str(data), "split": None, "threshold": threshold,
        "threshold_source": "given" if package else "calibrated",
        "oracle_threshold": oracle, "oracle_balanced_accuracy": oracle_accuracy,
        "unreadable": int(np.isnan(probabilities).sum()),
        "metrics": metrics_by_generator(samples, probabilities, threshold),
        "probabilities": probabilities_by_path(samples, probabilities),
    }
    if package:
        sha = package.encode().hex().ljust(64, "0")[:64]
        errors = {s.path: f"{s.path}: truncated" for s, p in zip(samples, probabilities, strict=True) if np.isnan(p)}
        report = {"package": {"path": package, "precision": "fp32", "file": "model.onnx", "sha256": sha},
                  "backend": "onnxruntime", "device": "cpu", **common, "errors": errors}
    else:
        report = {"run": run, **common, "tta": 1}
        if run and "student" in run:
            report["checkpoint"] = {"path": f"{run}/model.safetensors", "sha256": "c0ffee" * 10 + "abcd"}
    if robustness is not None:
        report["robustness"] = robustness
    return report


def perturbed(samples: list[Sample], probabilities: np.ndarray, threshold: float, rng: np.random.Generator) -> list:
    """Robustness entries for two kinds, given on the command line in no particular order."""
    entries = []
    for kind, levels in (("jpeg", ["50", "90", "75"]), ("blur", ["1", "3"])):
        for level in levels:
            noisy = np.clip(probabilities + rng.normal(0, 0.2, len(probabilities)), 0, 1)
            entries.append({"perturbation": kind, "level": level, "description": f"{kind} {level}",
                            "metrics": metrics_by_generator(samples, noisy, threshold), "unreadable": 0,
                            "probabilities": probabilities_by_path(samples, noisy)})
    return entries


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Three detectors (well separated, middling, random with one image unscored) on 5 generators, one of them
    fake only, with JPEG and blur robustness entries; the report written once, timed."""
    root = tmp_path_factory.mktemp("data") / "bench"
    samples = make_data(root, {"sdxl": (12, 12), "biggan": (10, 10), "midjourney": (10, 14), LONG_NAME: (8, 8),
                               "onlyfake": (0, 9)})
    rng = np.random.default_rng(1)
    y = np.array([s.label for s in samples])
    good = np.clip(np.where(y == FAKE, rng.normal(0.85, 0.08, len(y)), rng.normal(0.15, 0.08, len(y))), 0, 1)
    middling = np.clip(np.where(y == FAKE, rng.normal(0.6, 0.2, len(y)), rng.normal(0.4, 0.2, len(y))), 0, 1)
    random = rng.random(len(y))
    random[3] = np.nan
    targets = ["models/teacher.dgs", "runs/student", "other/random.dgs"]
    reports = [
        make_report(samples, good, 0.5, root, package=targets[0], robustness=perturbed(samples, good, 0.5, rng)),
        make_report(samples, middling, 0.42, root, run=targets[1], robustness=perturbed(samples, middling, .42, rng)),
        make_report(samples, random, 0.5, root, package=targets[2], robustness=perturbed(samples, random, 0.5, rng)),
    ]
    labels = detector_labels(targets)
    out = tmp_path_factory.mktemp("reports") / "report ñ"
    start = time.perf_counter()
    written = write_report(out, reports, labels, samples)
    seconds = time.perf_counter() - start
    return {"root": root, "samples": samples, "reports": reports, "labels": labels, "out": out, "written": written,
            "seconds": seconds}


def test_every_file_is_written_and_listed(evaluated):
    out = evaluated["out"]
    on_disk = sorted(p for p in out.rglob("*") if p.is_file())
    assert sorted(evaluated["written"]) == on_disk
    names = {p.relative_to(out).as_posix() for p in on_disk}
    assert names == {"metrics.json", "per_generator.csv", "robustness.csv", "report.md", "figures/roc.png",
                     "figures/pr.png", "figures/roc_generators.png", "figures/pr_generators.png",
                     "figures/histograms.png", "figures/confusion.png", "figures/robustness_jpeg.png",
                     "figures/robustness_blur.png"}
    assert evaluated["seconds"] < 10, f"3 detectors x 5 generators took {evaluated['seconds']:.1f} s"


def test_figures_decode_and_are_not_blank(evaluated):
    for path in sorted((evaluated["out"] / "figures").glob("*.png")):
        image = cv2.imread(str(path))
        assert image is not None, path
        height, width = image.shape[:2]
        assert 500 <= width <= 3000 and 400 <= height <= 3000, (path.name, image.shape)
        colours = np.unique(image.reshape(-1, 3).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1]))
        assert image.std() > 10 and len(colours) > 50, path.name
        assert (image.min(axis=2) < 128).mean() > 0.01, f"{path.name}: almost no ink"


def test_metrics_json_is_the_comparison_json(evaluated):
    reports, labels = evaluated["reports"], evaluated["labels"]
    saved = json.loads((evaluated["out"] / "metrics.json").read_text())
    expected = {"detectors": reports, "comparison": compare_reports(reports, labels)}
    assert saved == json.loads(json.dumps(expected))
    assert [e["level"] for e in saved["detectors"][0]["robustness"]] == ["50", "90", "75", "1", "3"]


def test_per_generator_csv_holds_the_reports_figures(evaluated):
    reports, labels = evaluated["reports"], evaluated["labels"]
    with open(evaluated["out"] / "per_generator.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TABLE_COLUMNS
    assert len(rows) == len(reports) * 6  # 5 generators and the mean
    by_key = {(r["detector"], r["generator"]): r for r in rows}
    for label, report in zip(labels, reports, strict=True):
        for generator, m in report["metrics"].items():
            row = by_key[(label, generator)]
            assert int(row["count"]) == m["count"]
            for key in ("acc", "real_acc", "fake_acc", "ap", "auc"):
                assert (row[key] == "") if m[key] is None else (float(row[key]) == m[key]), (label, generator, key)
            assert float(row["threshold"]) == report["threshold"]
    assert by_key[("teacher.dgs", "onlyfake")]["auc"] == "" and by_key[("teacher.dgs", "sdxl")]["auc"] != ""


def test_robustness_csv_orders_levels_mildest_first_after_the_clean_images(evaluated):
    reports, labels = evaluated["reports"], evaluated["labels"]
    with open(evaluated["out"] / "robustness.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ROBUSTNESS_COLUMNS
    levels = {}
    for row in rows:
        if row["detector"] == "student" and row["generator"] == "mean":
            levels.setdefault(row["perturbation"], []).append(row["level"])
    assert levels == {"jpeg": ["none", "90", "75", "50"], "blur": ["none", "1", "3"]}
    student = reports[labels.index("student")]
    for row in rows:
        if row["detector"] != "student":
            continue
        if row["level"] == "none":
            m = student["metrics"][row["generator"]]
        else:
            entry = next(e for e in student["robustness"]
                         if (e["perturbation"], e["level"]) == (row["perturbation"], row["level"]))
            m = entry["metrics"][row["generator"]]
        assert (row["auc"] == "") if m["auc"] is None else float(row["auc"]) == m["auc"]
        assert float(row["acc"]) == m["acc"] and int(row["count"]) == m["count"]


def test_report_md_names_what_was_scored_on_which_data_and_links_every_figure(evaluated):
    out, reports = evaluated["out"], evaluated["reports"]
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.startswith(HEADING + "\n")
    for report in reports:
        assert report.get("package", report.get("checkpoint", {})).get("sha256", "not recorded") in text
        assert f"| {report['threshold']:.4f} |" in text
        if report["oracle_threshold"] is not None:
            assert f"{report['oracle_threshold']:.4f}" in text
    assert "records no checksum of its weights" not in text  # every detector here has one
    assert data_fingerprint(evaluated["samples"], evaluated["root"]).sha256 in text
    assert "| onlyfake | 0 | 9 | 9 |" in text
    assert "ΔAUC student" in text and "could not score 1 image " in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert sorted(links) == pngs
    captions = [line for line in text.splitlines() if line.startswith("*") and line.endswith("*")]
    assert len(captions) == len(pngs)


def test_fingerprint_changes_with_bytes_and_labels_not_with_order(tmp_path):
    root = tmp_path / "data"
    samples = make_data(root, {"a": (3, 3), "b": (2, 2)})
    first = data_fingerprint(samples, root)
    assert first.files == 10 and not first.unreadable and re.fullmatch(r"[0-9a-f]{64}", first.sha256)
    assert data_fingerprint(list(reversed(samples)), root) == first
    # the documented listing, recomputed independently
    lines = sorted(json.dumps([Path(s.path).relative_to(root).as_posix(), s.label,
                               hashlib.sha256(Path(s.path).read_bytes()).hexdigest()]) + "\n" for s in samples)
    assert first.sha256 == hashlib.sha256("".join(lines).encode()).hexdigest()
    moved = tmp_path / "moved elsewhere"
    root.rename(moved)
    assert data_fingerprint(discover_samples(moved), moved).sha256 == first.sha256  # paths relative to the root
    samples = discover_samples(moved)
    relabelled = [Sample(s.path, 1 - s.label, s.generator) if i == 0 else s for i, s in enumerate(samples)]
    assert data_fingerprint(relabelled, moved).sha256 != first.sha256
    target = Path(samples[-1].path)
    target.write_bytes(target.read_bytes() + b"\0")
    assert data_fingerprint(samples, moved).sha256 != first.sha256


def test_fingerprint_notes_files_it_cannot_read(tmp_path):
    samples = make_data(tmp_path, {"a": (2, 2)})
    whole = data_fingerprint(samples, tmp_path)
    Path(samples[0].path).unlink()
    noted = data_fingerprint(samples, tmp_path)
    assert noted.files == 4 and list(noted.unreadable) == [samples[0].path]
    assert "no such file" in noted.unreadable[samples[0].path] and noted.sha256 != whole.sha256


def single(tmp_path: Path, generators: dict[str, tuple[int, int]] | None = None) -> tuple[list[Sample], dict]:
    root = tmp_path / "data"
    samples = make_data(root, generators or {"sdxl": (4, 4)})
    y = np.array([s.label for s in samples], dtype=float)
    probabilities = np.clip(0.2 + 0.6 * y + np.linspace(-0.15, 0.15, len(y)), 0, 1)
    return samples, make_report(samples, probabilities, 0.5, root, run="runs/teacher")


def test_single_report_json_and_rewrite_of_a_previous_report(tmp_path, evaluated):
    samples, report = single(tmp_path)
    out = tmp_path / "report"
    write_report(out, [report], ["teacher"], samples)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(report))
    assert "records no checksum of its weights" in (out / "report.md").read_text()
    assert not (out / "figures" / "roc_generators.png").exists()  # one generator: the pooled figure is the same
    # a previous report with robustness figures, rewritten without them: its stale files go
    old = tmp_path / "old"
    for path in evaluated["out"].rglob("*"):
        if path.is_file():
            (old / path.relative_to(evaluated["out"])).parent.mkdir(parents=True, exist_ok=True)
            (old / path.relative_to(evaluated["out"])).write_bytes(path.read_bytes())
    written = write_report(old, [report], ["teacher"], samples)
    assert sorted(p for p in old.rglob("*") if p.is_file()) == sorted(written)
    assert not (old / "robustness.csv").exists() and not list(old.glob("figures/robustness_*"))


@pytest.mark.parametrize("kind", ["file", "unrelated folder", "data root", "report md only by name",
                                  "report with a file of someone else"])
def test_refuses_a_place_that_is_not_a_report_folder(tmp_path, kind):
    samples, report = single(tmp_path)
    if kind == "file":
        out = tmp_path / "model.dgs"
        out.write_bytes(b"PK\x03\x04 a model package")
        expected = "is a file, not a folder"
    elif kind == "unrelated folder":
        out = tmp_path / "my photos"
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"\xff\xd8")
        expected = "holds other files than a dgs report"
    elif kind == "data root":
        out = tmp_path / "data" / "report"
        expected = "lies inside the data root"
    elif kind == "report md only by name":
        out = tmp_path / "notes"
        out.mkdir()
        (out / "report.md").write_text("# my notes\n")
        expected = "holds other files than a dgs report"
    else:
        out = tmp_path / "report"
        (out / "figures").mkdir(parents=True)
        (out / "report.md").write_text(HEADING + "\n")
        (out / "figures" / "drawn by hand.svg").write_text("<svg/>")
        expected = "holds other files than a dgs report"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(EvaluationError, match=re.escape(str(out)) + ".*" + expected):
        write_report(out, [report], ["teacher"], samples)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_refuses_samples_that_are_not_the_scored_images(tmp_path):
    samples, report = single(tmp_path)
    with pytest.raises(EvaluationError, match=re.escape(samples[0].path)):
        write_report(tmp_path / "out", [report], ["teacher"], samples[1:])
    with pytest.raises(EvaluationError, match="one distinct label per detector"):
        write_report(tmp_path / "out", [report, report], ["teacher", "teacher"], samples)
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    samples, report = single(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DgsError, match=re.escape('pip install "dgs[report]"')):
        write_report(tmp_path / "out", [report], ["teacher"], samples)
    assert not (tmp_path / "out").exists()


def test_many_long_generator_names_are_paged_and_a_one_class_panel_says_so(tmp_path):
    generators = {f"{LONG_NAME} {i:02d}": (2, 2) for i in range(13)} | {"fake only": (0, 3)}
    samples, report = single(tmp_path, generators)
    scores = [figures.DetectorScores("teacher", np.array([s.label for s in samples]),
                                     np.array(list(report["probabilities"].values())),
                                     np.array([s.generator for s in samples], dtype=object), 0.5)]
    grid = figures.roc_figure(scores, [f"{LONG_NAME} 00", f"{LONG_NAME} 01", "fake only"])
    texts = [t.get_text() for ax in grid.axes for t in ax.texts]
    assert texts == ["one class only (0 real / 3 fake):\nno curve"]
    titles = [ax.get_title() for ax in grid.axes if ax.get_visible()]
    assert all(len(line) <= 27 for title in titles for line in title.splitlines())
    assert len(set(titles)) == 3  # long names of one family keep the ends that tell them apart
    assert grid.axes[0].get_legend() is not None and grid.axes[2].get_legend() is None

    out = tmp_path / "report"
    written = write_report(out, [report], ["teacher"], samples)
    pages = sorted(p.name for p in written if "generators" in p.name)
    assert pages == ["pr_generators_1.png", "pr_generators_2.png", "roc_generators_1.png", "roc_generators_2.png"]
    for name in pages:
        height, width = cv2.imread(str(out / "figures" / name)).shape[:2]
        assert width <= 2000 and height <= 1700, (name, width, height)  # 7 panels a page, not 14 squeezed



def test_names_with_dollars_and_bytes_that_are_not_utf8_are_drawn_as_written(tmp_path):
    """Detector and generator names come from file and folder names: ``$`` would start matplotlib's mathtext (a
    lone one fails the drawing) and a surrogate-escaped byte fails the font renderer."""
    generators = {"a$\\frac{$b": (2, 2), "caf\udce9": (2, 2)}
    samples, report = single(tmp_path, generators)
    written = write_report(tmp_path / "report", [report], ["s$\\frac{$.dgs"], samples)
    assert (tmp_path / "report" / "figures" / "roc_generators.png") in written
    assert figures.figure_text("a$b\udce9") == "a\\$b\\udce9"


def test_data_of_one_class_only_gives_a_report_that_says_so(tmp_path):
    root = tmp_path / "fakes"
    fakes = make_data(root, {"sdxl": (0, 4), "biggan": (0, 3)})
    probabilities = np.linspace(0.1, 0.9, len(fakes))
    report = make_report(fakes, probabilities, 0.5, root, run="runs/teacher")
    assert report["oracle_threshold"] is None and report["metrics"]["mean"]["auc"] is None
    written = write_report(tmp_path / "report", [report], ["teacher"], fakes)
    assert {p.name for p in written} >= {"roc.png", "roc_generators.png", "confusion.png", "report.md"}
    scores = [figures.DetectorScores("teacher", np.ones(len(fakes), int), probabilities,
                                     np.array([s.generator for s in fakes], dtype=object), 0.5)]
    for figure in (figures.roc_figure(scores), figures.pr_figure(scores)):
        assert figure.axes[0].texts[0].get_text() == "one class only (0 real / 7 fake):\nno curve"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| teacher | 0.5000 | calibrated | - | - | 0 |" in text
    assert "| **mean** | 7 | 50.00 | - | 50.00 | - | - |" in text


def test_levels_go_from_mildest_to_harshest():
    assert order_levels("jpeg", ["50", "95", "75"]) == ["95", "75", "50"]
    assert order_levels("blur", ["3", "0.5", "1"]) == ["0.5", "1", "3"]
    assert order_levels("resize", ["0.5", "0.75", "0.25"]) == ["0.75", "0.5", "0.25"]
    assert order_levels("crop", ["0.8", "0.9"]) == ["0.9", "0.8"]
    assert order_levels("noise", ["b", "a", "b"]) == ["b", "a"]


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path):
    samples, report = single(tmp_path, {"=gen|B*": (2, 2)})
    write_report(tmp_path / "report", [report], ["=HYPERLINK(1).dgs"], samples)
    rows = list(csv.reader(io.StringIO((tmp_path / "report" / "per_generator.csv").read_text())))
    assert rows[1][:2] == ["'=HYPERLINK(1).dgs", "'=gen|B*"]


def test_a_curve_equal_to_an_earlier_one_is_drawn_on_it_thinner(tmp_path):
    """A run and the package exported from it give the same curve: the first stays visible around the second."""
    samples, report = single(tmp_path)
    truth = np.array([s.label for s in samples])
    probability = np.array(list(report["probabilities"].values()))
    generator = np.array([s.generator for s in samples], dtype=object)
    scores = [figures.DetectorScores(name, truth, probability, generator, 0.5) for name in ("run", "run.dgs")]
    for figure in (figures.roc_figure(scores), figures.pr_figure(scores)):
        widths = {line.get_label().split(":")[0]: line.get_linewidth() for line in figure.axes[0].get_lines()}
        assert widths["run"] > widths["run.dgs"]
