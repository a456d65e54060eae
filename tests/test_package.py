"""The `.dgs` model package: round trip, verification and the errors a damaged package gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import GATE_FIGURES, mean_graph, scaled_graph, variant_package
from dgs_sdk import Manifest, ModelPackage, ModelPackageError, PreprocessSpec, preprocess, write_package
from dgs_sdk.package import FORMAT_VERSION, MANIFEST_NAME, sha256_hex

GRAPH = mean_graph(size=224)


def make_package(path: Path, model: bytes = GRAPH, **manifest_fields) -> Path:
    manifest = Manifest(preprocess=PreprocessSpec.patch_select(), **manifest_fields)
    return write_package(path, manifest, {manifest.model_file: model, "labels.txt": b"real\nfake\n"})


def rewrite(path: Path, edit_manifest=None, members: dict[str, bytes] | None = None, drop: str | None = None):
    """Rewrite a package in place, changing its manifest or members without updating checksums."""
    with zipfile.ZipFile(path) as zf:
        contents = {name: zf.read(name) for name in zf.namelist()}
    if edit_manifest:
        manifest = json.loads(contents[MANIFEST_NAME])
        edit_manifest(manifest)
        contents[MANIFEST_NAME] = json.dumps(manifest).encode()
    contents.update(members or {})
    contents.pop(drop, None)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)


def test_round_trip_keeps_every_field_and_checksums(tmp_path):
    path = make_package(
        tmp_path / "sub dir" / "modèle.dgs",
        threshold=0.37,
        threshold_source="calibrated",
        architecture={"arch": "ViT-L-14", "method": "dgs"},
        provenance={"epochs": 1, "data": "AIGIBench"},
    )
    package = ModelPackage.load(path)
    m = package.manifest
    assert package.model_bytes == GRAPH
    assert list(package.members) == ["model.onnx"]  # other members are verified, not held
    assert package.read_member("labels.txt") == b"real\nfake\n"
    assert m.preprocess == PreprocessSpec.patch_select()
    assert (m.threshold, m.threshold_source) == (0.37, "calibrated")
    assert m.architecture == {"arch": "ViT-L-14", "method": "dgs"}
    assert m.provenance == {"epochs": 1, "data": "AIGIBench"}
    assert m.files["model.onnx"] == {"sha256": sha256_hex(GRAPH), "size": len(GRAPH)}
    assert package.model_sha256 == sha256_hex(GRAPH)
    assert package.fixed_batch is None
    raw = json.loads(zipfile.ZipFile(path).read(MANIFEST_NAME))
    assert raw["format"] == "dgs-model" and raw["format_version"] == FORMAT_VERSION
    assert raw["model"]["output_meaning"] == "logit of 'fake'"
    assert raw["preprocess"]["transform"] == "patch-select" and raw["created"]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: rewrite(p, members={"model.onnx": GRAPH[:-1] + b"x"}), "fails its checksum"),
        (lambda p: rewrite(p, drop="labels.txt"), r"\['labels.txt'\] listed in the manifest are missing"),
        (lambda p: rewrite(p, drop=MANIFEST_NAME), "no manifest.json inside"),
        (lambda p: rewrite(p, members={MANIFEST_NAME: b"{not json"}), "not valid JSON"),
        (lambda p: rewrite(p, lambda m: m.update(format_version=FORMAT_VERSION + 1)), "newer than this SDK"),
        (lambda p: rewrite(p, lambda m: m.update(format="something-else")), "not a dgs model manifest"),
        (lambda p: rewrite(p, lambda m: m.update(threshold=1.5)), "not a probability"),
        (lambda p: rewrite(p, lambda m: m["preprocess"].update(transform="warp")), "transform 'warp' is unknown"),
        (lambda p: rewrite(p, lambda m: m.pop("preprocess")), "'preprocess' is missing"),
        (lambda p: rewrite(p, lambda m: m["preprocess"].update(small_images="crop")), "small_images 'crop' is unknown"),
        (lambda p: rewrite(p, lambda m: m["files"].pop("model.onnx")), "member .model.onnx. has no checksum"),
        (lambda p: p.write_bytes(b"PK\x03\x04 but not really a zip"), "not a zip file"),
        (lambda p: p.write_text("<html>hello</html>"), "not a zip file"),
    ],
)
def test_damaged_packages_give_clear_errors(tmp_path, damage, message):
    path = make_package(tmp_path / "model.dgs")
    damage(path)
    with pytest.raises(ModelPackageError, match=message) as info:
        ModelPackage.load(path)
    assert str(path) in str(info.value)


def test_small_image_policy_travels_in_the_manifest(tmp_path, photos):
    from dgs_sdk import Detector

    spec = PreprocessSpec.patch_select(small_images="pad")
    path = write_package(tmp_path / "pad.dgs", Manifest(preprocess=spec), {"model.onnx": GRAPH})
    assert json.loads(zipfile.ZipFile(path).read(MANIFEST_NAME))["preprocess"]["small_images"] == "pad"
    assert ModelPackage.load(path).manifest.preprocess == spec
    # The detector applies it: an image under one patch is an error row, one under 224 px is scored unresized.
    image = np.ascontiguousarray(photos["rocket"][:128, :128])
    thin, small = Detector(path).predict([photos["rocket"][:20, :300], image])
    assert not thin.ok and "smaller than one 32x32 patch" in thin.error
    # The graph's logit is the mean of its input: that of the padded mosaic, not of the resized one.
    assert small.logit == pytest.approx(float(preprocess(image, spec).mean()), rel=1e-5)
    assert small.logit != pytest.approx(float(preprocess(image, PreprocessSpec.patch_select()).mean()), rel=1e-3)
    # A package written before the field existed keeps the resizing it was made with.
    rewrite(path, lambda m: m["preprocess"].pop("small_images"))
    assert ModelPackage.load(path).manifest.preprocess == PreprocessSpec.patch_select()


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ModelPackageError, match="absent.dgs: no such file"):
        ModelPackage.load(tmp_path / "absent.dgs")
    with pytest.raises(ModelPackageError, match="is a directory"):
        ModelPackage.load(tmp_path)


def test_write_refuses_a_package_without_its_model(tmp_path):
    manifest = Manifest(preprocess=PreprocessSpec.clip())
    with pytest.raises(ModelPackageError, match="not among the members"):
        write_package(tmp_path / "m.dgs", manifest, {"other.onnx": b"x"})
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"model.dgs.{dead.stdout.strip()}-0123abcd.tmp"  # left by a writer killed mid-write
    alive = tmp_path / f"model.dgs.{os.getppid()}-0123abcd.tmp"  # another writer, still at work
    other = tmp_path / "other.dgs.1-0123abcd.tmp"
    for path in (stale, alive, other):
        path.write_bytes(b"half a zip")
    make_package(tmp_path / "model.dgs")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.dgs", alive.name, other.name])


def test_a_package_that_would_not_load_never_replaces_a_good_one(tmp_path):
    good = make_package(tmp_path / "model.dgs")
    before = good.read_bytes()
    with pytest.raises(ModelPackageError, match="'threshold'"):
        make_package(good, threshold=float("nan"))
    with pytest.raises(ModelPackageError, match="output 'logit' has shape"):
        make_package(good, model=mean_graph(size=224, declared=["batch", 2], output="pairs"))
    assert good.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.dgs"]


def test_a_package_holds_precision_variants_and_keeps_only_the_one_it_loads(tmp_path):
    path = variant_package(tmp_path / "variants.dgs", ("fp32", "fp16", "int8-cpu"))
    raw = json.loads(zipfile.ZipFile(path).read(MANIFEST_NAME))
    assert raw["format_version"] == 2 and "file" not in raw["model"]
    figures = GATE_FIGURES
    assert raw["model"]["variants"]["fp16"] == {"file": "model.fp16.onnx", "accuracy": figures}
    package = ModelPackage.load(path, precision="int8-cpu")
    m = package.manifest
    assert list(m.variants) == ["fp32", "fp16", "int8-cpu"] and m.default_precision == "fp32"
    assert list(package.members) == ["model.int8-cpu.onnx"]
    assert m.variants["int8-cpu"].accuracy == GATE_FIGURES
    assert package.variant_bytes("fp16") == scaled_graph(2.0, 224)  # read on demand, verified
    assert package.variant_sha256("fp32") == sha256_hex(scaled_graph(1.0, 224))
    with pytest.raises(ModelPackageError, match=r"variants.dgs: has no 'int8' variant \(it has fp32, fp16, int8-cpu\)"):
        package.variant_bytes("int8")
    with pytest.raises(ModelPackageError, match="has no 'int8' variant"):
        ModelPackage.load(path, precision="int8")


def test_a_package_without_fp32_defaults_to_its_first_variant(tmp_path):
    package = ModelPackage.load(variant_package(tmp_path / "edge.dgs", ("int8", "fp16")))
    assert package.manifest.default_precision == "int8" and package.manifest.model_file == "model.int8.onnx"


def test_a_variant_modified_after_writing_is_refused_when_it_is_read(tmp_path):
    path = variant_package(tmp_path / "variants.dgs")
    rewrite(path, members={"model.int8-cpu.onnx": scaled_graph(7.0, 224)})
    with pytest.raises(ModelPackageError, match="'model.int8-cpu.onnx' fails its checksum"):
        ModelPackage.load(path)  # every member is verified at load, whichever variant is kept


def test_a_variant_whose_graph_does_not_match_the_manifest_is_never_written(tmp_path):
    from dgs_sdk.package import Variant

    variants = {"fp32": Variant("fp32", "model.onnx"), "fp16": Variant("fp16", "model.fp16.onnx")}
    manifest = Manifest(preprocess=PreprocessSpec.clip(), variants=variants)
    with pytest.raises(ModelPackageError, match="model.fp16.onnx"):
        write_package(tmp_path / "bad.dgs", manifest, {"model.onnx": GRAPH, "model.fp16.onnx": mean_graph(size=64)})
    assert not (tmp_path / "bad.dgs").exists()
    with pytest.raises(ModelPackageError, match=r"variant members \['model.fp16.onnx'\] are not among"):
        write_package(tmp_path / "bad.dgs", manifest, {"model.onnx": GRAPH})


def test_format_1_packages_still_load_as_one_fp32_variant(tmp_path):
    path = make_package(tmp_path / "old.dgs")

    def as_format_1(manifest: dict) -> None:
        manifest["format_version"] = 1
        manifest["model"]["file"] = manifest["model"].pop("variants")["fp32"]["file"]

    rewrite(path, as_format_1)
    package = ModelPackage.load(path)
    assert list(package.manifest.variants) == ["fp32"] and package.model_bytes == GRAPH
