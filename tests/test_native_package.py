"""The C++ package reader (dgs_native) against the Python one: on a corpus of valid and hostile packages, built
with the Python tests' own helpers and cases, it accepts exactly what `ModelPackage.load` and `read_manifest`
accept, returns the same manifest, and refuses the rest with a message naming the same package and field or
member."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import test_hostile_packages as hostile
import test_package as damaged
from conftest import graph_package, mean_graph, scaled_graph, variant_package
from dgs_sdk import Manifest, ModelPackage, ModelPackageError, PreprocessSpec, write_package
from dgs_sdk.package import MANIFEST_NAME, read_manifest

dgs_native = pytest.importorskip("dgs_native")

SIZE = hostile.SIZE


def cases_of(test, *argnames: str) -> list:
    """The parameter sets of one of the Python tests (its pytest.mark.parametrize), as (id, values)."""
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize" and m.args[0] == argnames]
    return [(case.id, case.values) for case in mark.args[1]]


def typed_manifest(change) -> bytes:
    """test_manifest_types_are_exact_and_errors_name_the_field's manifest, changed."""
    manifest = Manifest(preprocess=PreprocessSpec(transform="clip", size=SIZE)).to_dict()
    graph = mean_graph(SIZE)
    manifest["files"] = {"model.onnx": {"sha256": hashlib.sha256(graph).hexdigest(), "size": len(graph)}}
    return json.dumps(change(manifest)).encode()


def raw_manifest(text: str) -> Callable[[Path], Path]:
    return lambda path: hostile.raw_package(path, text.encode())


def manifest_with(**fields) -> Callable[[Path], Path]:
    return lambda path: hostile.raw_package(path, fields)


def with_tokens(fields: dict, token: str) -> Callable[[Path], Path]:
    """A valid manifest given ``fields``, where the string "TOKEN" is replaced by a bare JSON ``token``."""
    def build(path: Path) -> Path:
        graph = mean_graph(SIZE)
        base = Manifest(preprocess=PreprocessSpec(transform="clip", size=SIZE)).to_dict()
        base["files"] = {"model.onnx": {"sha256": hashlib.sha256(graph).hexdigest(), "size": len(graph)}}
        base.update(fields)
        return hostile.raw_package(path, json.dumps(base).replace('"TOKEN"', token).encode())

    return build


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    from google.protobuf.internal.encoder import _VarintBytes

    return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload


def nested_type_graph(depth: int) -> bytes:
    """The mean graph with a value_info typed as a sequence of sequences ... ``depth`` deep: its innermost
    dimension lies 6 + 2 * depth messages below the model (protobuf's parser stops at 100)."""
    from onnx import TensorProto, helper

    element = helper.make_tensor_type_proto(TensorProto.FLOAT, [1]).SerializeToString()
    for _ in range(depth):
        element = field(4, field(1, element))  # TypeProto{sequence_type: {elem_type: element}}
    return mean_graph(SIZE) + field(7, field(13, field(1, b"deep") + field(2, element)))  # merged into the graph


def graph_field_twice() -> bytes:
    """A model whose graph field occurs twice: protobuf merges them (the second adds an input)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_model_from_string(mean_graph(SIZE))
    extra = onnx.GraphProto()
    extra.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [1]))
    return model.SerializeToString() + b"\x3a" + len(extra.SerializeToString()).to_bytes(1, "little") + \
        extra.SerializeToString()


def truncated_graph() -> bytes:
    return mean_graph(SIZE)[:-3]


def with_graph(graph: Callable[[], bytes], size: int = SIZE) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        spec = PreprocessSpec(transform="clip", size=size).to_dict()
        return hostile.raw_package(path, {"preprocess": spec}, members={"model.onnx": graph()})

    return build


def damaged_package(damage) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        damaged.make_package(path)
        damage(path)
        return path

    return build


def written(data: bytes) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return build


def zip64_package(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(65_540):
            zf.writestr(f"e{i}", b"")
    return path


def as_format_1(path: Path) -> Path:
    damaged.make_package(path)

    def edit(manifest: dict) -> None:
        manifest["format_version"] = 1
        manifest["model"]["file"] = manifest["model"].pop("variants")["fp32"]["file"]

    damaged.rewrite(path, edit)
    return path


def patch_select_pad(path: Path) -> Path:
    return write_package(path, Manifest(preprocess=PreprocessSpec.patch_select(small_images="pad")),
                         {"model.onnx": mean_graph(224)})


def calibrated(path: Path) -> Path:
    return graph_package(path, mean_graph(SIZE, batch=3), size=SIZE, threshold=0.37, threshold_source="calibrated",
                         architecture={"arch": "x", "big": 10**30}, provenance={"epochs": 1, "n": [1, 2.5, None]})


def stored_entry(name: str, data: bytes, method: int) -> Callable[[Path], Path]:
    """A valid package with one more member of compression ``method`` (listed in the manifest)."""
    def build(path: Path) -> Path:
        graph = mean_graph(SIZE)
        members = {"model.onnx": graph, name: data}
        hostile.raw_package(path, members=members)
        with zipfile.ZipFile(path) as zf:
            contents = [(info, zf.read(info)) for info in zf.infolist()]
        with zipfile.ZipFile(path, "w") as zf:
            for info, content in contents:
                zf.writestr(info.filename, content, compress_type=method if info.filename == name else None)
        return path

    return build


def corpus() -> list[tuple[str, Callable[[Path], Path]]]:
    cases: list[tuple[str, Callable[[Path], Path]]] = [
        ("valid clip", lambda p: graph_package(p, mean_graph(SIZE), size=SIZE)),
        ("valid variants", lambda p: variant_package(p, ("fp32", "fp16", "int8-cpu"), size=SIZE)),
        ("valid without fp32", lambda p: variant_package(p, ("int8", "fp16"), size=SIZE)),
        ("valid patch-select pad", patch_select_pad),
        ("valid with labels", lambda p: damaged.make_package(p)),
        ("valid format 1", as_format_1),
        ("valid fixed batch, calibrated, free-form", calibrated),
        ("valid bzip2 member", stored_entry("labels.txt", b"real\nfake\n" * 50, zipfile.ZIP_BZIP2)),
        ("valid big integer in provenance", manifest_with(provenance={"seed": 10**40, "neg": -(10**40)})),
        ("valid tiny float", with_tokens({"provenance": {"x": "TOKEN"}}, "1e-400")),
        ("integer of 4300 digits", with_tokens({"provenance": {"x": "TOKEN"}}, "-" + "7" * 4300)),
        ("integer of 4301 digits", with_tokens({"provenance": {"x": "TOKEN"}}, "-" + "7" * 4301)),
        ("NaN token in accuracy", with_tokens({"model": {"format": "onnx", "variants": {"fp32": {
            "file": "model.onnx", "accuracy": {"auc": "TOKEN"}}}}}, "NaN")),
        ("-Infinity token in mean", with_tokens({"preprocess": {"transform": "clip", "size": 32, "mean": [
            0.5, "TOKEN", 0.5]}}, "-Infinity")),
        ("valid graph field twice", with_graph(graph_field_twice)),
        ("valid type 100 messages deep", with_graph(lambda: nested_type_graph(47))),
        ("type 102 messages deep", with_graph(lambda: nested_type_graph(48))),
        ("truncated graph", with_graph(truncated_graph)),
        ("not ONNX", with_graph(lambda: b"\xff\xff\xff")),
        ("empty graph", with_graph(lambda: b"")),
        ("NaN in architecture", raw_manifest('{"format": "dgs-model", "architecture": {"a": [1, NaN]}}')),
        ("Infinity threshold", manifest_with(threshold=math.inf)),
        ("1e400 in provenance", manifest_with(provenance={"x": 1e400})),
        ("big integer threshold", manifest_with(threshold=-(10**30))),
        ("big integer size", manifest_with(preprocess={"transform": "clip", "size": 10**30})),
        ("big integer format version", manifest_with(format_version=10**30)),
        ("format version 0", manifest_with(format_version=0)),
        ("format version float", manifest_with(format_version=2.0)),
        ("byte-order mark", lambda p: hostile.raw_package(p, b"\xef\xbb\xbf" + json.dumps(
            Manifest(preprocess=PreprocessSpec(transform="clip", size=SIZE)).to_dict()).encode())),
        ("not UTF-8", lambda p: hostile.raw_package(p, b'{"format": "dgs-model\xff"}')),
        ("manifest a list", lambda p: hostile.raw_package(p, b"[1, 2]")),
        ("duplicate nested keys", raw_manifest('{"format": "dgs-model", "provenance": {"a": 1, "a": 2}}')),
        ("nested 400", raw_manifest('{"format": "dgs-model", "provenance": ' + "[" * 400 + "]" * 400 + "}")),
        ("preprocess unknown key", manifest_with(preprocess={"transform": "clip", "size": 32, "crop": 1})),
        ("preprocess no transform", manifest_with(preprocess={"size": 32})),
        ("patch not dividing", manifest_with(preprocess={"transform": "patch-select", "size": 32, "patch_size": 12,
                                                         "mean": [0.5] * 3, "std": [0.5] * 3})),
        ("patch_size 4", manifest_with(preprocess={"transform": "clip", "size": 32, "patch_size": 4})),
        ("pad for clip", manifest_with(preprocess={"transform": "clip", "size": 32, "small_images": "pad"})),
        ("interpolation", manifest_with(preprocess={"transform": "clip", "size": 32, "interpolation": "nearest"})),
        ("mean of 2", manifest_with(preprocess={"transform": "clip", "size": 32, "mean": [0.5, 0.5]})),
        ("mean bools", manifest_with(preprocess={"transform": "clip", "size": 32, "mean": [True, 0.5, 0.5]})),
        ("model format", manifest_with(model={"format": "tflite", "variants": {"fp32": {"file": "model.onnx"}}})),
        ("model unknown field", manifest_with(model={"format": "onnx", "file": "model.onnx",
                                                     "variants": {"fp32": {"file": "model.onnx"}}})),
        ("input name", manifest_with(model={"format": "onnx", "input": "pixels",
                                            "variants": {"fp32": {"file": "model.onnx"}}})),
        ("output name", manifest_with(model={"format": "onnx", "output": "score",
                                             "variants": {"fp32": {"file": "model.onnx"}}})),
        ("created number", manifest_with(created=5)),
        ("files not object", manifest_with(files={"model.onnx": [1]})),
        ("sha256 missing", manifest_with(files={"model.onnx": {"size": 3}})),
        ("directory", lambda p: p.parent),
        ("no such file", lambda p: p.parent / "absent.dgs"),
        ("zip64 directory", zip64_package),
        ("empty file", written(b"")),
        ("end record cut", written(b"PK\x05\x06" + b"\0" * 10)),
    ]
    if hasattr(os, "mkfifo"):
        cases.append(("fifo", lambda p: os.mkfifo(p) or p))
    for placement in ("initializer", "node attribute", "subgraph"):
        cases.append((f"external data, {placement}",
                      with_graph(lambda placement=placement: hostile.graph_with_external(placement, "/etc/passwd"))))
    cases += [
        ("huge manifest", lambda p: hostile.raw_package(p, b'{"format": "dgs-model"' + b" " * (2 << 20) + b"}")),
        ("member padded", lambda p: hostile.raw_package(p, {"files": {"model.onnx": {
            "sha256": hashlib.sha256(mean_graph(SIZE)).hexdigest(), "size": len(mean_graph(SIZE))}}},
            members={"model.onnx": mean_graph(SIZE) + b"\0" * 1_000_000})),
        ("72 members", lambda p: hostile.raw_package(p, extra=[(f"x{i}", b"") for i in range(70)])),
        ("nested 200,000", raw_manifest('{"format": "dgs-model", "provenance": ' + "[" * 200_000 + "]" * 200_000
                                        + "}")),
        ("duplicate member", lambda p: hostile.raw_package(p, extra=[("model.onnx", mean_graph(SIZE)[:-1] + b"x")])),
        ("duplicate keys", lambda p: hostile.raw_package(p, json.dumps(Manifest(preprocess=PreprocessSpec(
            transform="clip", size=SIZE)).to_dict())[:-1].encode() + b', "threshold": 0.01}')),
        ("unlisted member", lambda p: hostile.raw_package(p, extra=[("payload.bin", b"unlisted")])),
    ]
    for id_, (change, _) in cases_of(hostile.test_manifest_types_are_exact_and_errors_name_the_field, "change",
                                     "message"):
        cases.append((f"typed: {id_}", lambda p, change=change: hostile.raw_package(p, typed_manifest(change))))
    for id_, (entry, _) in cases_of(hostile.test_member_entries_are_typed, "entry", "message"):
        def build(p, entry=entry):
            graph = mean_graph(SIZE)
            files = {"model.onnx": {"sha256": hashlib.sha256(graph).hexdigest(), "size": len(graph), **entry}}
            return hostile.raw_package(p, {"files": files})
        cases.append((f"files entry: {id_}", build))
    for id_, (graph, _) in cases_of(hostile.test_graph_interface_must_match_the_manifest_at_load, "graph", "message"):
        cases.append((f"interface: {id_}", with_graph(graph)))
    for id_, (graph, message) in cases_of(hostile.test_a_graph_is_a_bounded_feed_forward_network_of_standard_operators,
                                          "graph", "message"):
        cases.append((f"graph: {id_}", with_graph(graph, 1024 if "1024" in message else SIZE)))
    (mark,) = [m for m in damaged.test_damaged_packages_give_clear_errors.pytestmark if m.name == "parametrize"]
    for damage, message in mark.args[1]:  # plain tuples, without ids
        cases.append((f"damaged: {message}", damaged_package(damage)))
    return cases


CORPUS = corpus()


def outcome(call) -> tuple[str, object]:
    try:
        return "ok", call()
    except (ModelPackageError, dgs_native.ModelPackageError) as e:
        return "refused", str(e)


def expected_dict(manifest: Manifest, path: Path) -> dict:
    d = manifest.to_dict()
    with zipfile.ZipFile(path) as zf:
        version = json.loads(zf.read(MANIFEST_NAME))["format_version"]
    return {"format_version": version, "preprocess": d["preprocess"],
            "variants": {p: v["file"] for p, v in d["model"]["variants"].items()}, "threshold": d["threshold"],
            "threshold_source": d["threshold_source"], "input_name": d["model"]["input"],
            "output_name": d["model"]["output"], "files": d["files"], "created": d["created"]}


def same_refusal(python: str, native: str, path: Path) -> None:
    """Both name the package, and the C++ message names what Python's does: its quoted names, or its words."""
    assert str(path) in python and str(path) in native, (python, native)
    quoted = re.findall(r"'[^']*'", python.replace(str(path), ""))
    if quoted:
        assert quoted[0] in native, (python, native)
    else:
        head = python.replace(str(path), "").split("(")[0].strip(" :")
        assert head in native, (python, native)


@pytest.mark.parametrize("build", [c[1] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_the_native_reader_accepts_and_refuses_what_python_does(tmp_path, build):
    path = build(tmp_path / "model package.dgs")
    python = outcome(lambda: read_manifest(path))
    native = outcome(lambda: dgs_native.read_manifest(str(path)))
    assert python[0] == native[0], (python, native)
    if python[0] == "ok":
        assert native[1] == expected_dict(python[1], path)
    else:
        same_refusal(python[1], native[1], path)
    python = outcome(lambda: ModelPackage.load(path))
    native = outcome(lambda: dgs_native.load_package(str(path)))
    assert python[0] == native[0], (python, native)
    if python[0] == "ok":
        package = python[1]
        expected = expected_dict(package.manifest, path)
        expected.update(precision=package.manifest.default_precision, model_sha256=package.model_sha256,
                        batch=package.fixed_batch)
        assert native[1] == expected
    else:
        same_refusal(python[1], native[1], path)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8-cpu", "int8", "fp64"])
def test_a_variant_is_chosen_and_refused_as_python_does(tmp_path, precision):
    path = variant_package(tmp_path / "variants.dgs", ("fp32", "fp16", "int8-cpu"), size=SIZE)
    python = outcome(lambda: ModelPackage.load(path, precision=precision))
    native = outcome(lambda: dgs_native.load_package(str(path), precision))
    assert python[0] == native[0]
    if python[0] == "ok":
        assert native[1]["precision"] == precision
        assert native[1]["model_sha256"] == python[1].variant_sha256(precision)
    else:
        assert native[1] == python[1]


def test_a_member_modified_after_writing_fails_its_checksum_in_both(tmp_path):
    path = variant_package(tmp_path / "variants.dgs", size=SIZE)
    damaged.rewrite(path, members={"model.int8-cpu.onnx": scaled_graph(7.0, SIZE)})  # same size, other bytes
    python, native = outcome(lambda: ModelPackage.load(path)), outcome(lambda: dgs_native.load_package(str(path)))
    assert python[0] == native[0] == "refused" and "'model.int8-cpu.onnx' fails its checksum" in native[1]
    assert dgs_native.read_manifest(str(path))["variants"]["int8-cpu"] == "model.int8-cpu.onnx"  # not read there


def test_an_lzma_member_is_read_where_libzip_reads_lzma_and_refused_by_name_elsewhere(tmp_path):
    """Python reads LZMA members; libzip only from 1.8 (Debian 12 has 1.7.3). dgs never writes them."""
    path = stored_entry("labels.txt", b"real\nfake\n" * 50, zipfile.ZIP_LZMA)(tmp_path / "lzma.dgs")
    ModelPackage.load(path)
    python_like = outcome(lambda: dgs_native.load_package(str(path)))
    if python_like[0] == "refused":
        assert "member 'labels.txt': compression method 14 is not supported" in python_like[1]
    else:
        assert python_like[1]["files"]["labels.txt"]["size"] == 500


def test_a_deep_and_wide_free_form_field_is_read_by_both(tmp_path):
    path = hostile.deep_and_wide_architecture(tmp_path / "deep.dgs")
    python = outcome(lambda: read_manifest(path))
    native = outcome(lambda: dgs_native.read_manifest(str(path)))
    assert python[0] == native[0] == "ok", (python[0], native[0])
