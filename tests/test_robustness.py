"""Hostile inputs: pipes, elongated images, deep trees, odd file names, damaged packages, failed exports."""

from __future__ import annotations

import csv
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_image
from dgs_sdk import Detector, ImageTooLarge, ModelPackageError, PreprocessSpec, UnreadableImage
from dgs_sdk.cli import main
from dgs_sdk.image import read_bytes
from dgs_sdk.package import MANIFEST_NAME
from dgs_sdk.preprocess import preprocess, resize_shortest_side


def scan(*args):
    result = CliRunner().invoke(main, ["scan", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_pipes_are_refused_unopened_and_the_scan_finishes(tmp_path, photos, clip_package):
    folder = tmp_path / "in"
    write_image(folder / "good.png", photos["coffee"])
    os.mkfifo(folder / "pipe.jpg")
    with pytest.raises(UnreadableImage, match="not a regular file"):
        read_bytes(folder / "pipe.jpg")
    out = tmp_path / "r.csv"
    result = scan(folder, "--model", clip_package, "--out", out)
    assert result.exit_code == 1
    rows = rows_of(out)
    assert rows[str(folder / "good.png")]["probability"]
    assert "not a regular file" in rows[str(folder / "pipe.jpg")]["error"]


def test_oversized_files_are_refused_before_reading(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG" + b"\x00" * 2000)
    with pytest.raises(UnreadableImage, match="file too large"):
        read_bytes(path, max_bytes=1000)


def test_elongated_images_are_refused_not_resized_into_gigabytes(tmp_path, clip_package):
    thin = np.full((1, 60_000, 3), 128, np.uint8)
    with pytest.raises(ImageTooLarge, match="too elongated"):
        resize_shortest_side(thin, 224)
    for spec in (PreprocessSpec.clip(), PreprocessSpec.patch_select()):
        with pytest.raises(ImageTooLarge):
            preprocess(thin, spec)
    result = Detector(clip_package).predict(thin)
    assert result.error and "too elongated" in result.error
    # Elongated but reasonable images are still scored.
    assert Detector(clip_package).predict(np.full((40, 4000, 3), 128, np.uint8)).ok


def test_hidden_files_deep_trees_and_glob_filters(tmp_path, photos, clip_package):
    root = tmp_path / "deep"
    folder = root
    for _ in range(300):
        folder = folder / "d"
    write_image(folder / "bottom.png", photos["chelsea"])
    write_image(root / "._resource.jpg", photos["chelsea"][:8, :8])
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "r.csv"
    assert scan(root, "--model", clip_package, "--out", out).exit_code == 0
    assert list(rows_of(out)) == [str(folder / "bottom.png")]
    # A pattern takes only image files among its matches (folders it matches are walked).
    assert scan(str(root / "*"), "--model", clip_package, "--out", out, "--overwrite").exit_code == 0
    assert list(rows_of(out)) == [str(folder / "bottom.png")]
    assert scan(str(root / "*.txt"), "--model", clip_package, "--out", out, "--overwrite").exit_code == 1
    assert "matched no image files" in next(iter(rows_of(out).values()))["error"]


@pytest.mark.skipif(sys.platform != "linux", reason="file names as arbitrary bytes")
def test_file_names_that_are_not_utf8_survive(tmp_path, photos, clip_package):
    folder = tmp_path / "names"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    write_image(folder / "tmp.png", photos["rocket"])
    os.rename(folder / "tmp.png", raw)
    out = tmp_path / "r.csv"
    result = scan(folder, "--model", clip_package, "--out", out)
    assert result.exit_code == 0, result.output
    assert raw in out.read_bytes()


def test_missing_output_folder_is_a_usage_error(tmp_path, photo_folder, clip_package):
    out = tmp_path / "no such folder" / "r.csv"
    result = scan(photo_folder, "--model", clip_package, "--out", out)
    assert result.exit_code == 2 and "does not exist" in result.output


def rewrite_manifest(package: Path, target: Path, edit) -> Path:
    with zipfile.ZipFile(package) as zf:
        contents = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(contents[MANIFEST_NAME])
    edit(manifest, contents)
    contents[MANIFEST_NAME] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    return target


def garbage_model(manifest, contents):
    import hashlib

    contents["model.onnx"] = b"this is not a protobuf"
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(b"this is not a protobuf").hexdigest(), "size": 22}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m, c: m.update(model="onnx"), "field 'model' must be an object, got a string"),
        (lambda m, c: m["files"].update({"model.onnx": "abc"}), "'model.onnx' must be an object"),
        (lambda m, c: m.update(architecture=["vit"]), "field 'architecture' must be an object, got a list"),
        (garbage_model, "is not an ONNX model"),
        (lambda m, c: m["model"].update(output="probability"), "has no output 'probability'"),
        (lambda m, c: m["preprocess"].update(size=256), r"manifest's preprocessing gives \[B, 3, 256, 256\]"),
    ],
)
def test_damaged_packages_fail_at_load_with_exit_code_2(tmp_path, clip_package, photo_folder, edit, message):
    damaged = rewrite_manifest(clip_package, tmp_path / "damaged.dgs", edit)
    with pytest.raises(ModelPackageError, match=message) as info:
        Detector(damaged)
    assert str(damaged) in str(info.value)
    result = scan(photo_folder, "--model", damaged)
    assert result.exit_code == 2 and "Error:" in result.output


def test_failed_export_leaves_an_existing_package_alone(tmp_path, tiny_model, photos, clip_package):
    from dgs_export import ParityError, export_package

    out = tmp_path / "model.dgs"
    out.write_bytes(clip_package.read_bytes())
    with pytest.raises(ParityError, match="no package was written"):
        export_package(tiny_model, out, PreprocessSpec.clip(), [photos["coffee"]], tolerance=-1.0)
    assert out.read_bytes() == clip_package.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dgs"]
