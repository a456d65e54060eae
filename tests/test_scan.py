"""`dgs scan` and `dgs info` through click's CliRunner, and once through a real subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import dgs_sdk
from conftest import bomb_png, write_image
from dgs_sdk import Detector
from dgs_sdk.cli import main

COLUMNS = ["path", "probability", "label", "error"]


@pytest.fixture(scope="module")
def detector(clip_package) -> Detector:
    """The reference: what the Python API says about each file, with the package's defaults."""
    return Detector(clip_package)


def run_cli(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def scan(package: Path, *args) -> object:
    return run_cli("scan", "--model", package, *args)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def images_in(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}}


def assert_scored_like_the_api(rows: list[dict], detector: Detector) -> None:
    for row in rows:
        expected = detector.predict(row["path"])
        assert expected.ok, expected.error
        probability = float(row["probability"])
        assert 0.0 <= probability <= 1.0
        assert probability == pytest.approx(expected.probability, abs=1e-6), row["path"]
        assert row["label"] == ("fake" if probability >= detector.threshold else "real")
        assert row["error"] in ("", None)


# --- the main path -----------------------------------------------------------------------------------------------


def test_scan_folder_to_csv(tmp_path, photo_folder, clip_package, detector):
    out = tmp_path / "results.csv"
    result = scan(clip_package, photo_folder, "--out", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert sorted(r["path"] for r in rows) == sorted(images_in(photo_folder))
    assert len(rows) == 4
    assert_scored_like_the_api(rows, detector)
    real = sum(r["label"] == "real" for r in rows)
    assert f"4 files: {real} real, {4 - real} fake, 0 errors" in result.stderr
    assert str(out) in result.stderr
    assert result.stdout == ""


def test_scan_writes_csv_to_stdout_and_the_summary_to_stderr(photo_folder, clip_package, detector):
    result = scan(clip_package, photo_folder)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 4 and set(rows[0]) == set(COLUMNS)
    assert_scored_like_the_api(rows, detector)
    assert "4 files" in result.stderr and "4 files" not in result.stdout


def test_scan_folder_to_jsonl(tmp_path, photo_folder, clip_package, detector):
    out = tmp_path / "résultats 1.jsonl"
    result = scan(clip_package, photo_folder, "--out", out)
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 4 and all(set(r) == set(COLUMNS) for r in rows)
    assert all(isinstance(r["probability"], float) and r["error"] is None for r in rows)
    assert sorted(r["path"] for r in rows) == sorted(images_in(photo_folder))
    assert_scored_like_the_api(rows, detector)


@pytest.fixture
def mixed_folder(tmp_path, photos) -> Path:
    """Two good photos and four files that cannot be decoded."""
    folder = tmp_path / "mixed ñ"
    folder.mkdir()
    write_image(folder / "good one.jpg", photos["coffee"])
    write_image(folder / "good two.png", photos["rocket"])
    (folder / "zero.jpg").write_bytes(b"")
    ok, jpeg = cv2.imencode(".jpg", photos["astronaut"])
    (folder / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    (folder / "text.png").write_text("this is not a picture\n" * 10, encoding="utf-8")
    (folder / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    return folder


def test_scan_reports_corrupt_files_as_error_rows(tmp_path, mixed_folder, clip_package, detector):
    out = tmp_path / "results.csv"
    result = scan(clip_package, mixed_folder, "--out", out)
    assert result.exit_code == 1, result.output
    rows = {Path(r["path"]).name: r for r in read_csv(out)}
    assert set(rows) == {"good one.jpg", "good two.png", "zero.jpg", "truncated.jpg", "text.png", "bomb.png"}
    assert_scored_like_the_api([rows["good one.jpg"], rows["good two.png"]], detector)
    reasons = {"zero.jpg": "empty", "truncated.jpg": "truncated", "text.png": "not an image", "bomb.png": "too large"}
    for name, reason in reasons.items():
        row = rows[name]
        assert row["probability"] == "" and row["label"] == "", row
        assert row["path"] in row["error"] and reason in row["error"], row
    assert "6 files" in result.stderr and "4 errors" in result.stderr


# --- what gets scanned -------------------------------------------------------------------------------------------


def test_no_recursive_takes_only_top_level_files(tmp_path, photo_folder, clip_package):
    out = tmp_path / "results.csv"
    result = scan(clip_package, photo_folder, "--no-recursive", "--out", out)
    assert result.exit_code == 0, result.output
    top_level = {str(p) for p in photo_folder.iterdir() if p.is_file()}
    assert len(top_level) == 2
    assert {r["path"] for r in read_csv(out)} == top_level


@pytest.fixture
def odd_names_folder(tmp_path, photos) -> Path:
    folder = tmp_path / "odd names"
    folder.mkdir()
    for name in ("upper.JPG", "mixed.Png", "weird.JpEg", "shot [1].webp"):
        write_image(folder / name, photos["chelsea"])
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    (folder / "README").write_text("no extension", encoding="utf-8")
    (folder / "data.json").write_text("{}", encoding="utf-8")
    return folder


def test_extensions_are_case_insensitive_and_other_files_ignored(tmp_path, odd_names_folder, clip_package):
    out = tmp_path / "results.csv"
    result = scan(clip_package, odd_names_folder, "--out", out)
    assert result.exit_code == 0, result.output
    names = sorted(Path(r["path"]).name for r in read_csv(out))
    assert names == ["mixed.Png", "shot [1].webp", "upper.JPG", "weird.JpEg"]


def test_non_image_named_explicitly_gets_an_error_row(tmp_path, odd_names_folder, clip_package):
    out = tmp_path / "results.csv"
    notes, image = odd_names_folder / "notes.txt", odd_names_folder / "upper.JPG"
    result = scan(clip_package, notes, image, "--out", out)
    assert result.exit_code == 1, result.output
    rows = {r["path"]: r for r in read_csv(out)}
    assert set(rows) == {str(notes), str(image)}
    assert str(notes) in rows[str(notes)]["error"] and "not an image" in rows[str(notes)]["error"]
    assert rows[str(image)]["error"] == "" and rows[str(image)]["label"] in ("real", "fake")


def test_a_file_name_with_glob_characters_is_taken_literally(tmp_path, odd_names_folder, clip_package):
    out = tmp_path / "results.csv"
    path = odd_names_folder / "shot [1].webp"
    result = scan(clip_package, path, "--out", out)
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in read_csv(out)] == [str(path)]


@pytest.fixture
def glob_folder(tmp_path, photos) -> Path:
    folder = tmp_path / "glob ñ"
    (folder / "sub").mkdir(parents=True)
    write_image(folder / "a.jpg", photos["coffee"])
    write_image(folder / "b.jpg", photos["rocket"])
    write_image(folder / "c.png", photos["chelsea"])
    write_image(folder / "sub" / "d.jpg", photos["astronaut"])
    return folder


def test_glob_patterns_expand(tmp_path, glob_folder, clip_package):
    out = tmp_path / "results.csv"
    result = scan(clip_package, str(glob_folder / "*.jpg"), "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(Path(r["path"]).name for r in read_csv(out)) == ["a.jpg", "b.jpg"]

    result = scan(clip_package, str(glob_folder / "**" / "*.jpg"), "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(Path(r["path"]).name for r in read_csv(out)) == ["a.jpg", "b.jpg", "d.jpg"]


def test_unmatched_pattern_and_missing_path_give_error_rows(tmp_path, glob_folder, clip_package):
    out = tmp_path / "results.csv"
    pattern, missing = str(glob_folder / "*.tiff"), str(tmp_path / "no such folder")
    result = scan(clip_package, pattern, missing, glob_folder / "c.png", "--out", out)
    assert result.exit_code == 1, result.output
    rows = {r["path"]: r for r in read_csv(out)}
    assert set(rows) == {pattern, missing, str(glob_folder / "c.png")}
    assert pattern in rows[pattern]["error"] and "matched no image files" in rows[pattern]["error"]
    assert missing in rows[missing]["error"] and "no such file" in rows[missing]["error"]
    assert rows[pattern]["probability"] == rows[missing]["probability"] == ""
    assert rows[str(glob_folder / "c.png")]["label"] in ("real", "fake")
    assert "3 files" in result.stderr and "2 errors" in result.stderr


def test_symlink_loop_terminates_and_scans_each_image(tmp_path, photos, clip_package):
    folder = tmp_path / "loop"
    (folder / "sub").mkdir(parents=True)
    a = write_image(folder / "a.jpg", photos["coffee"])
    b = write_image(folder / "sub" / "b.png", photos["rocket"])
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)  # sub/up -> its parent
    (folder / "self").symlink_to(".", target_is_directory=True)
    out = tmp_path / "results.csv"
    result = scan(clip_package, folder, "--out", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert {os.path.realpath(r["path"]) for r in rows} == {os.path.realpath(a), os.path.realpath(b)}
    # Folders are visited once each (by device and inode): every image once, under its first-found path.
    assert sorted(r["path"] for r in rows) == sorted([str(a), str(b)])
    assert all(r["error"] == "" for r in rows)


def test_a_folder_given_twice_in_two_spellings_is_scored_once(tmp_path, glob_folder, clip_package, monkeypatch):
    monkeypatch.chdir(glob_folder.parent)
    out = tmp_path / "results.csv"
    result = scan(clip_package, glob_folder.name, str(glob_folder), f"./{glob_folder.name}", "--out", out)
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 4


def test_a_file_given_twice_is_scored_once(tmp_path, glob_folder, clip_package):
    out = tmp_path / "results.csv"
    a = glob_folder / "a.jpg"
    result = scan(clip_package, a, a, f"{glob_folder}{os.sep}.{os.sep}a.jpg", glob_folder, "--out", out)
    assert result.exit_code == 0, result.output
    paths = [os.path.normpath(r["path"]) for r in read_csv(out)]
    assert paths.count(str(a)) == 1
    assert len(paths) == len(set(paths)) == 4


# --- usage errors -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tampered_package(tmp_path_factory, clip_package) -> Path:
    """The fixture package with one byte of model.onnx changed and the original manifest kept."""
    path = tmp_path_factory.mktemp("tampered") / "tampered.dgs"
    with zipfile.ZipFile(clip_package) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.writestr(info, data)
    return path


def _not_a_zip(tmp_path: Path) -> Path:
    path = tmp_path / "model.dgs"
    path.write_text("definitely not a zip file\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing model", "nowhere.dgs: no such file"),
        ("model is not a zip", "not a zip"),
        ("model is a folder", "is a directory"),
        ("tampered model", "fails its checksum"),
        ("output .txt", "must end in .csv or .jsonl"),
        ("output folder missing", "cannot write results"),
        ("batch size 0", "--batch-size"),
        ("workers 0", "--workers"),
        ("threshold 2", "--threshold"),
        ("threshold -0.1", "--threshold"),
        ("no --model", "--model"),
        ("no paths", "PATHS"),
    ],
)
def test_usage_errors_exit_2_with_a_message(request, tmp_path, clip_package, case, message):
    folder, out = tmp_path / "images", tmp_path / "results.csv"
    folder.mkdir()
    tampered_package = request.getfixturevalue("tampered_package") if case == "tampered model" else None
    args = {
        "missing model": ["--model", tmp_path / "nowhere.dgs", folder],
        "model is not a zip": ["--model", _not_a_zip(tmp_path), folder],
        "model is a folder": ["--model", tmp_path, folder],
        "tampered model": ["--model", tampered_package, folder, "--out", out],
        "output .txt": ["--model", clip_package, folder, "--out", tmp_path / "results.txt"],
        "output folder missing": ["--model", clip_package, folder, "--out", tmp_path / "not made" / "results.csv"],
        "batch size 0": ["--model", clip_package, folder, "--batch-size", "0"],
        "workers 0": ["--model", clip_package, folder, "--workers", "0"],
        "threshold 2": ["--model", clip_package, folder, "--threshold", "2"],
        "threshold -0.1": ["--model", clip_package, folder, "--threshold", "-0.1"],
        "no --model": [folder],
        "no paths": ["--model", clip_package],
    }[case]
    result = run_cli("scan", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert result.stdout == ""  # no rows, no partial CSV header
    assert not out.exists() and not (tmp_path / "results.txt").exists()


def test_tampered_package_error_names_the_member(tmp_path, tampered_package):
    result = run_cli("scan", "--model", tampered_package, tmp_path)
    assert "model.onnx" in result.stderr and str(tampered_package) in result.stderr


# --- options --------------------------------------------------------------------------------------------------------


def test_threshold_0_labels_everything_fake_and_1_everything_real(tmp_path, photo_folder, clip_package):
    out = tmp_path / "results.csv"
    assert scan(clip_package, photo_folder, "--threshold", "0", "--out", out).exit_code == 0
    rows = read_csv(out)
    assert len(rows) == 4 and all(r["label"] == "fake" for r in rows)
    assert scan(clip_package, photo_folder, "--threshold", "1", "--out", out, "--overwrite").exit_code == 0
    rows = read_csv(out)
    assert len(rows) == 4
    for r in rows:  # only a probability that rounds to exactly 1.0 reaches a threshold of 1
        assert r["label"] == ("fake" if float(r["probability"]) >= 1.0 else "real"), r


def test_batch_size_and_workers_do_not_change_probabilities(tmp_path, mixed_folder, photo_folder, clip_package):
    def probabilities(*options: str) -> dict[str, str]:
        out = tmp_path / "results.csv"
        result = scan(clip_package, photo_folder, mixed_folder, *options, "--out", out, "--overwrite")
        assert result.exit_code == 1, result.output
        return {r["path"]: (r["probability"], r["error"]) for r in read_csv(out)}

    default = probabilities()
    assert len(default) == 10
    for options in (("--batch-size", "1"), ("--workers", "1"), ("--batch-size", "3", "--workers", "2")):
        other = probabilities(*options)
        assert list(other) == list(default), options  # same rows, same order
        for path, (probability, error) in default.items():
            assert other[path][1] == error
            if probability:
                assert float(other[path][0]) == pytest.approx(float(probability), abs=1e-6), (options, path)


def test_patch_select_package_scans_too(tmp_path, photo_folder, patch_package):
    out = tmp_path / "results.jsonl"
    result = scan(patch_package, photo_folder, "--out", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    detector = Detector(patch_package)
    assert len(rows) == 4
    assert_scored_like_the_api(rows, detector)


# --- help and info ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["scan", "info"]),
        (("scan",), ["--model", "--out", "--threshold", "--batch-size", "--workers", "--no-recursive"]),
        (("info",), ["Versions"]),
    ],
)
def test_help(args, expected):
    for flag in ("--help", "-h"):
        result = run_cli(*args, flag)
        assert result.exit_code == 0, result.output
        for text in expected:
            assert text in result.stdout, (args, text)


def test_version():
    result = run_cli("--version")
    assert result.exit_code == 0 and dgs_sdk.__version__ in result.stdout


def test_info_lists_versions_providers_and_native_core():
    result = run_cli("info")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"dgs {dgs_sdk.__version__}" in text
    assert f"python {platform.python_version()}" in text
    assert f"numpy: {np.__version__}" in text
    assert "onnxruntime" in text and "CPUExecutionProvider" in text
    assert "native core " in text


# --- a real process -------------------------------------------------------------------------------------------------


def dgs_command() -> list[str]:
    script = Path(sys.executable).with_name("dgs")
    if script.exists():
        return [str(script)]
    found = shutil.which("dgs")
    return [found] if found else [sys.executable, "-m", "dgs_sdk.cli"]


def test_scan_in_a_subprocess(tmp_path, mixed_folder, photo_folder, clip_package, detector):
    out = tmp_path / "sub process ñ.csv"
    cmd = dgs_command() + ["scan", str(photo_folder), str(mixed_folder / "zero.jpg"), "-m", str(clip_package),
                           "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "5 files" in done.stderr and "1 error" in done.stderr
    rows = read_csv(out)
    assert len(rows) == 5
    assert_scored_like_the_api([r for r in rows if not r["error"]], detector)
    (zero,) = [r for r in rows if r["error"]]
    assert zero["path"] == str(mixed_folder / "zero.jpg") and "empty" in zero["error"]
