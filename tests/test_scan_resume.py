"""Scans that survive interruption: rows flushed a batch at a time, `--resume` after a kill at any moment,
old results never lost before the new scan has scored its first batch, a full disk ending on a whole row."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import graph_package, mean_graph, write_image
from dgs_sdk import Detector
from dgs_sdk.cli import main
from dgs_sdk.results import read_rows
from dgs_sdk.scan import ScanConfig, scan

NAMES = ["plain.png", "a,b.png", "line\nbreak.png", 'say "hi".png', "=sum.png", "ünï.png", "broken.png"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos) -> Path:
    """Images whose names need quoting and escaping (one spans two lines in CSV), and one that is not an image."""
    root = tmp_path_factory.mktemp("resume") / "images"
    crops = [p[:96, :96] for p in photos.values()]
    for i in range(18):
        write_image(root / f"{i:02d}.png", crops[i % len(crops)][:, ::1 + i % 2])
    for i, name in enumerate(NAMES[:-1]):
        write_image(root / name, crops[i % len(crops)])
    (root / NAMES[-1]).write_text("not an image")
    return root


@pytest.fixture(scope="module")
def detector(clip_package) -> Detector:
    return Detector(clip_package, batch_size=4, workers=2)


def run_cli(*args):
    result = CliRunner().invoke(main, ["scan", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def by_path(path: Path) -> dict[str, dict]:
    rows = read_rows(path, "csv" if path.suffix == ".csv" else "jsonl").rows
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a file has two rows"
    return {r["path"]: r for r in rows}


def assert_same_results(actual: dict[str, dict], expected: dict[str, dict]) -> None:
    assert set(actual) == set(expected)
    for path, row in expected.items():
        assert actual[path]["error"] == row["error"], path
        if row["probability"] is not None:
            assert float(actual[path]["probability"]) == pytest.approx(float(row["probability"]), abs=1e-6), path


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_resume_after_a_cut_at_any_byte_gives_exactly_one_row_per_file(tmp_path, folder, detector, clip_package,
                                                                       ext):
    reference = tmp_path / f"reference{ext}"
    assert scan(ScanConfig([str(folder)], str(clip_package), out=str(reference)), detector=detector).errors == 1
    expected = by_path(reference)
    assert len(expected) == 25
    data = reference.read_bytes()
    row_ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    cuts = {0, len(data), *row_ends[::3], *(end - 1 for end in row_ends[::4]), *(end - 7 for end in row_ends[1::4])}
    cuts.add(data.index(b"line\nbreak" if ext == ".csv" else b"line\\nbreak") + 5)  # a field that spans lines in CSV
    out = tmp_path / f"results{ext}"
    for cut in sorted(cuts):
        out.write_bytes(data[:cut])
        summary = scan(ScanConfig([str(folder)], str(clip_package), out=str(out), resume=True), detector=detector)
        assert summary.total == 25 and summary.errors == 1, cut
        assert_same_results(by_path(out), expected)
        assert read_rows(out, ext[1:]).whole == out.stat().st_size  # ends on a whole row


DGS = [sys.executable, "-c", "import sys; from dgs_sdk.cli import main; sys.argv[0] = 'dgs'; main()"]


def scan_until(images: Path, out: Path, package: Path, rows: int, **popen) -> subprocess.Popen:
    """A one-image-at-a-time `dgs scan` in its own process, returned once ``out`` holds ``rows`` whole rows."""
    command = [*DGS, "scan", str(images), "--model", str(package), "--out", str(out), "--batch-size", "2",
               "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, **popen)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and len(read_rows(out, out.suffix[1:]).rows) >= rows:
            break
        time.sleep(0.01)
    return process


def test_a_scan_killed_mid_way_keeps_its_rows_and_resumes(tmp_path, photos, clip_package):
    images = tmp_path / "many"
    for i in range(120):
        write_image(images / f"{i:03d}.jpg", photos["coffee"][: 40 + i, : 40 + i])
    out = tmp_path / "results.csv"
    process = scan_until(images, out, clip_package, rows=10, stderr=subprocess.DEVNULL)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    kept = len(read_rows(out, "csv").rows)
    assert 10 <= kept < 120
    result = run_cli(images, "--model", clip_package, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    rows = by_path(out)
    assert set(rows) == {str(p) for p in images.iterdir()}
    assert f"120 files ({kept} of them from the interrupted scan)" in result.stderr


def test_sigterm_ends_a_scan_like_ctrl_c(tmp_path, photos, clip_package):
    images = tmp_path / "many"
    for i in range(80):
        write_image(images / f"{i:03d}.png", photos["rocket"][: 50 + i, : 50 + i])
    out = tmp_path / "results.jsonl"
    process = scan_until(images, out, clip_package, rows=4, stderr=subprocess.PIPE, text=True)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "interrupted: rows written so far are kept; continue with --resume" in stderr and "Traceback" not in stderr
    previous = read_rows(out, "jsonl")
    assert 4 <= len(previous.rows) < 80 and previous.whole == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "results.jsonl"]


def test_an_existing_results_file_is_refused_without_resume_or_overwrite(tmp_path, folder, clip_package):
    out = tmp_path / "results.csv"
    out.write_text("my precious spreadsheet\n")
    result = run_cli(folder, "--model", clip_package, "--out", out)
    assert result.exit_code == 2 and "already exists; --resume continues" in result.stderr
    assert out.read_text() == "my precious spreadsheet\n"
    resumed = run_cli(folder, "--model", clip_package, "--out", out, "--resume")
    assert resumed.exit_code == 2 and "not a dgs results file" in resumed.stderr
    assert out.read_text() == "my precious spreadsheet\n"
    for args, message in ((["--resume"], "--resume needs --out"),
                          (["--resume", "--overwrite", "--out", out], "exclude each other")):
        result = run_cli(folder, "--model", clip_package, *args)
        assert result.exit_code == 2 and message in result.stderr


def test_overwrite_replaces_the_old_file_only_once_the_first_batch_is_scored(tmp_path, folder, photos,
                                                                           clip_package):
    out = tmp_path / "results.jsonl"
    old = b'{"path": "old", "probability": 0.5, "label": "fake", "error": null}\n'
    out.write_bytes(old)
    # A package that loads (its check at load runs one image) but fails on its first batch of two.
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [1])
    reshape = helper.make_node("Reshape", ["mean", "shape"], ["logit"])
    failing = graph_package(tmp_path / "fails.dgs", mean_graph(output="custom", extra_nodes=[reshape],
                                                               extra_initializers=[shape]), size=32)
    for model in (tmp_path / "missing.dgs", failing):
        result = run_cli(folder, "--model", model, "--out", out, "--overwrite", "--batch-size", "2")
        assert result.exit_code == 2, result.output
        assert out.read_bytes() == old
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fails.dgs", "results.jsonl"]  # no temporary file
    result = run_cli(folder, "--model", clip_package, "--out", out, "--overwrite")
    assert result.exit_code == 1 and len(by_path(out)) == 25 and "old" not in by_path(out)


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_a_full_disk_gives_exit_2_and_a_file_that_ends_on_a_whole_row(tmp_path, folder, clip_package, ext):
    out = tmp_path / f"results{ext}"

    def small_disk():  # writes beyond 1,500 bytes fail (EFBIG) as they would on a full disk (ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500, 1_500))

    command = [*DGS, "scan", str(folder), "--model", str(clip_package), "--out", str(out), "--batch-size", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=small_disk,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 2, done.stderr
    assert f"{out}: cannot write results (File too large)" in done.stderr and "Traceback" not in done.stderr
    previous = read_rows(out, ext[1:])
    assert 3 <= len(previous.rows) < 25 and previous.whole == out.stat().st_size
    assert out.stat().st_size <= 1_500
    # With room again, --resume completes it.
    result = run_cli(folder, "--model", clip_package, "--out", out, "--resume")
    assert result.exit_code == 1 and len(by_path(out)) == 25
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_rows_reach_the_file_a_batch_at_a_time(tmp_path, folder, clip_package, monkeypatch):
    """While the scan runs, the file already holds every batch scored so far (at most one batch in memory)."""
    import dgs_sdk.results

    out = tmp_path / "results.csv"
    seen: list[int] = []
    write = dgs_sdk.results.ResultsFile.write

    def spy(self, rows):
        write(self, rows)
        seen.append(len(read_rows(out, "csv").rows))

    monkeypatch.setattr(dgs_sdk.results.ResultsFile, "write", spy)
    detector = Detector(clip_package, batch_size=4)
    scan(ScanConfig([str(folder)], str(clip_package), out=str(out)), detector=detector)
    assert seen[:-1] == list(range(4, 25, 4)) and seen[-1] == 25
    assert np.all(np.diff(seen) <= 4)


def test_resume_knows_a_file_however_its_path_is_spelled(tmp_path, folder, clip_package, monkeypatch):
    monkeypatch.chdir(folder.parent)
    out = tmp_path / "results.csv"
    assert run_cli("images", "--model", clip_package, "--out", out).exit_code == 1
    for spelling in ("./images", str(folder), "images/../images"):
        result = run_cli(spelling, "--model", clip_package, "--out", out, "--resume")
        assert result.exit_code == 1 and "25 files (25 of them from the interrupted scan)" in result.stderr
        assert "(0.0 images/s)" in result.stderr
    assert len(read_rows(out, "csv").rows) == 25


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"path": ["x"], "probability": 0.5, "label": "fake", "error": null}', ":2: not a dgs results row"),
        ('{"path": "x", "probability": 0.5, "label": "maybe", "error": null}', ":2: not a dgs results row"),
        ('{"path": "x", "probability": 1.5, "label": "fake", "error": null}', ":2: not a dgs results row"),
        ('{"path": "x", "probability": 0.5, "label": "fake", "error": "and an error"}', ":2: not a dgs results row"),
    ],
)
def test_resume_refuses_rows_a_scan_does_not_write(tmp_path, folder, clip_package, line, message):
    out = tmp_path / "results.jsonl"
    out.write_text('{"path": "y", "probability": null, "label": null, "error": "y: empty file"}\n' + line + "\n")
    result = run_cli(folder, "--model", clip_package, "--out", out, "--resume")
    assert result.exit_code == 2 and message in result.stderr


def test_a_scan_that_finds_nothing_still_replaces_and_writes_its_results(tmp_path, clip_package):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "results.csv"
    out.write_text("stale rows of an older scan\n")
    result = run_cli(empty, "--model", clip_package, "--out", out, "--overwrite")
    assert result.exit_code == 0 and "no image files found" in result.stderr
    assert out.read_bytes() == b"path,probability,label,error\r\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_rows_on_a_full_standard_output_give_exit_2(folder, clip_package):
    with open("/dev/full", "w") as full:
        done = subprocess.run([*DGS, "scan", str(folder), "--model", str(clip_package)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "standard output: cannot write results (No space left on device)" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
