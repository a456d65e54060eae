"""The README's main job end to end: data -> train -> eval -> export -> scan, as `dgs demo` runs it."""

from __future__ import annotations

import csv

import pytest

from dgs_sdk.errors import DgsError

pytest.importorskip("torch")
pytest.importorskip("onnx")

from dgs_export.demo import DemoConfig, run_demo  # noqa: E402


@pytest.mark.slow
def test_demo_pipeline_scores_like_the_evaluation_and_beats_chance(tmp_path):
    lines: list[str] = []
    result = run_demo(DemoConfig(workdir=str(tmp_path / "demo dir"), device="cpu", progress=False), say=lines.append)
    report = result["report"]
    with open(result["scan"], newline="", encoding="utf-8") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(report["probabilities"]) and len(rows) == 64
    for path, probability in report["probabilities"].items():
        assert rows[path]["error"] == ""
        assert float(rows[path]["probability"]) == pytest.approx(probability, abs=1e-4), path
        assert rows[path]["label"] == ("fake" if float(rows[path]["probability"]) >= report["threshold"] else "real")
    seen = report["metrics"]["autoencoder"]
    assert seen["auc"] > 0.6 and seen["acc"] > 0.5, seen  # better than chance on held-out images
    assert report["threshold_source"] == "calibrated"
    assert result["summary"].errors == 0 and result["scan_vs_eval"] <= 1e-4
    assert any("largest probability difference" in line for line in lines)
    # MiraGe trained beside DGS-Net on the same data and was evaluated on the same test split.
    mirage = result["mirage_report"]
    assert mirage["threshold_source"] == "calibrated" and set(mirage["probabilities"]) == set(rows)
    assert (result["mirage_run"] / "model.safetensors").exists()
    assert any(line.startswith("MiraGe (") for line in lines) and any("Mean test AUC" in line for line in lines)
    # The student, half the teacher's depth, keeps the teacher's test AUC within 0.03, exports with an INT8 variant
    # through the accuracy gate, and scans with the SDK.
    student = result["student_report"]
    assert set(student["probabilities"]) == set(rows)
    assert student["metrics"]["mean"]["auc"] >= report["metrics"]["mean"]["auc"] - 0.03, (student, report)
    assert result["student_precisions"] == ["fp32", "int8"]
    assert result["student_summary"].errors == 0 and result["student_summary"].scored == 64
    assert any("ΔAUC" in line for line in lines)


def test_demo_refuses_to_replace_folders_it_did_not_write(tmp_path):
    precious = tmp_path / "data" / "thesis.txt"
    precious.parent.mkdir()
    precious.write_text("months of work")
    with pytest.raises(DgsError, match="did not write"):
        run_demo(DemoConfig(workdir=str(tmp_path), device="cpu", progress=False), say=lambda line: None)
    assert precious.read_text() == "months of work"
