"""Model packages as untrusted input: a `.dgs` downloaded from anywhere is refused, with its name and the
problem, before it can read files, exhaust memory, hang, or give results the SDK would misread."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import graph_package, mean_graph, write_image
from dgs_sdk import Detector, Manifest, ModelPackage, ModelPackageError, PreprocessSpec
from dgs_sdk.cli import main
from dgs_sdk.package import MANIFEST_NAME

SIZE = 32


def raw_package(path: Path, manifest: dict | bytes | None = None, members: dict[str, bytes] | None = None,
                extra: list[tuple[str, bytes]] = ()) -> Path:
    """A zip written by hand: the manifest (dict, or raw bytes) and members with their true checksums, then
    ``extra`` entries added as they are (duplicates included)."""
    members = {"model.onnx": mean_graph(SIZE)} if members is None else members
    if manifest is None or isinstance(manifest, dict):
        base = Manifest(preprocess=PreprocessSpec(transform="clip", size=SIZE)).to_dict()
        base["files"] = {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in members.items()}
        base.update(manifest or {})
        manifest = json.dumps(base).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_NAME, manifest)
        for name, data in [*members.items(), *extra]:
            zf.writestr(name, data)
    return path


def refused(path: Path, message: str) -> str:
    """The package fails to load with ``message``, naming the file."""
    with pytest.raises(ModelPackageError, match=message) as info:
        ModelPackage.load(path)
    assert str(path) in str(info.value)
    return str(info.value)


def scan_cli(*args):
    result = CliRunner().invoke(main, ["scan", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


# --- external data ---------------------------------------------------------------------------------------------


def external_tensor(location: str, name: str = "w"):
    from onnx import TensorProto, helper

    tensor = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def graph_with_external(placement: str, location: str) -> bytes:
    from onnx import TensorProto, helper

    tensor = external_tensor(location)
    if placement == "initializer":  # added to every logit, as a real weight would be
        add = helper.make_node("Add", ["mean", "w"], ["logit"])
        return mean_graph(SIZE, output="custom", extra_initializers=[tensor], extra_nodes=[add])
    if placement == "node attribute":
        return mean_graph(SIZE, extra_nodes=[helper.make_node("Constant", [], ["c"], value=tensor)])
    branch = helper.make_graph([helper.make_node("Constant", [], ["b"], value=tensor)], "branch", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    condition = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node("If", ["cond"], ["chosen"], then_branch=branch, else_branch=branch)
    return mean_graph(SIZE, extra_nodes=[node], extra_initializers=[condition])


@pytest.mark.parametrize("placement", ["initializer", "node attribute", "subgraph"])
@pytest.mark.parametrize("location", ["/etc/passwd", "../../x", "/proc/self/environ"])
def test_external_data_is_refused_before_any_runtime_sees_it(tmp_path, monkeypatch, placement, location):
    import onnxruntime

    def never(*args, **kwargs):
        raise AssertionError("onnxruntime was given a graph with external data")

    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    path = raw_package(tmp_path / "weights elsewhere.dgs", members={"model.onnx": graph_with_external(placement,
                                                                                                        location)})
    message = refused(path, "refers to external data")
    assert repr(location) in message and "'w'" in message
    with pytest.raises(ModelPackageError, match="external data"):
        Detector(path)


def test_write_package_refuses_a_graph_with_external_data(tmp_path):
    with pytest.raises(ModelPackageError, match="external data"):
        graph_package(tmp_path / "m.dgs", graph_with_external("initializer", "/etc/passwd"), size=SIZE)
    assert list(tmp_path.iterdir()) == []


# --- bounded loading ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_model_that_is_not_a_regular_file_is_refused_unopened(tmp_path, photo_folder, kind):
    if kind == "fifo":
        model = tmp_path / "model.dgs"
        os.mkfifo(model)  # opening it for reading would wait for a writer forever
    else:
        model = Path(kind)
        if not model.exists():
            pytest.skip("no /dev/zero here")
    code = "import sys; from dgs_sdk.cli import main; sys.argv[0] = 'dgs'; main()"
    done = subprocess.run([sys.executable, "-c", code, "scan", str(photo_folder), "--model", str(model)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{model}: is not a regular file" in done.stderr and "Traceback" not in done.stderr


def test_a_huge_manifest_is_refused_from_its_declared_size(tmp_path):
    manifest = b'{"format": "dgs-model"' + b" " * (2 * 1024 * 1024) + b"}"  # 2 MiB that deflate to 2 kB
    path = raw_package(tmp_path / "big manifest.dgs", manifest)
    assert path.stat().st_size < 20_000
    refused(path, "manifest.json declares 2,097,175 bytes; the limit is 1,048,576")


def test_member_sizes_are_checked_against_manifest_and_zip_before_reading(tmp_path, monkeypatch):
    graph = mean_graph(SIZE)
    padded = raw_package(tmp_path / "lying size.dgs", {"files": {"model.onnx": {
        "sha256": hashlib.sha256(graph).hexdigest(), "size": len(graph)}}},
        members={"model.onnx": graph + b"\0" * 50_000_000})
    assert padded.stat().st_size < 200_000
    refused(padded, f"'model.onnx' is 50,000,{len(graph):03d} bytes in the zip and {len(graph):,} in the manifest")
    # A member over the member limit is refused even when zip and manifest agree.
    monkeypatch.setattr("dgs_sdk.package.MAX_MEMBER_BYTES", len(graph) - 1)
    refused(raw_package(tmp_path / "big member.dgs"), "must agree and be at most")


def test_package_file_and_member_count_are_bounded(tmp_path, monkeypatch):
    many = raw_package(tmp_path / "many.dgs", extra=[(f"x{i}", b"") for i in range(70)])
    refused(many, "holds 72 members in a directory of 3,535 bytes; a model package has at most 64 members")
    path = raw_package(tmp_path / "fine.dgs")
    monkeypatch.setattr("dgs_sdk.package.MAX_PACKAGE_BYTES", path.stat().st_size - 1)
    refused(path, "file too large")


def test_a_deeply_nested_manifest_is_an_error_not_a_recursion_traceback(tmp_path, photo_folder):
    depth = 200_000
    manifest = b'{"format": "dgs-model", "provenance": ' + b"[" * depth + b"]" * depth + b"}"
    path = raw_package(tmp_path / "nested.dgs", manifest)
    refused(path, "nested too deeply")
    result = scan_cli(photo_folder, "--model", path)
    assert result.exit_code == 2 and "nested too deeply" in result.stderr


# --- duplicates and exact types -----------------------------------------------------------------------------------


def test_duplicate_members_are_refused(tmp_path):
    graph = mean_graph(SIZE)
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = raw_package(tmp_path / "twice.dgs", extra=[("model.onnx", graph[:-1] + b"x")])
    refused(path, "member 'model.onnx' appears twice")


def test_duplicate_manifest_keys_are_refused(tmp_path):
    text = json.dumps(Manifest(preprocess=PreprocessSpec(transform="clip", size=SIZE)).to_dict())
    manifest = text[:-1] + ', "threshold": 0.01}'  # a second threshold after the first
    refused(raw_package(tmp_path / "keys.dgs", manifest.encode()), r"duplicate keys \['threshold'\]")


def test_members_not_covered_by_a_checksum_are_refused(tmp_path):
    path = raw_package(tmp_path / "extra.dgs", extra=[("payload.bin", b"unlisted")])
    refused(path, r"\['payload.bin'\] are not listed")


def edit(field_path: str, value):
    def apply(manifest: dict) -> dict:
        *parents, last = field_path.split(".")
        target = manifest
        for key in parents:
            target = target[key]
        target[last] = value
        return manifest

    return apply


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(edit("threshold", "0.9"), "field 'threshold' must be an integer or a number, got a string",
                     id="threshold string"),
        pytest.param(edit("threshold", True), "field 'threshold' must be an integer or a number, got a boolean",
                     id="threshold true"),
        pytest.param(edit("threshold", math.nan), r"field 'threshold' \(nan\) is not a probability",
                     id="threshold NaN"),
        pytest.param(edit("threshold", 1.5), r"field 'threshold' \(1.5\) is not a probability", id="threshold 1.5"),
        pytest.param(edit("threshold", 10**400), r"field 'threshold' \(1000", id="threshold 10^400"),
        pytest.param(edit("preprocess.mean", [10**400, 0.5, 0.5]), "mean must be 3 finite numbers",
                     id="mean 10^400"),
        pytest.param(edit("format_version", True), "format_version missing or not an integer", id="version true"),
        pytest.param(edit("preprocess.std", [0.2, math.nan, 0.2]), "std must be 3 finite numbers", id="std NaN"),
        pytest.param(edit("preprocess.std", [0.2, math.inf, 0.2]), "std must be 3 finite numbers", id="std inf"),
        pytest.param(edit("preprocess.std", [0.2, 0, 0.2]), "std must be 3 finite numbers", id="std zero"),
        pytest.param(edit("preprocess.std", [0.2, 1e-300, 0.2]), "std must be 3 finite numbers", id="std tiny"),
        pytest.param(edit("preprocess.mean", [math.nan, 0.5, 0.5]), "mean must be 3 finite numbers", id="mean NaN"),
        pytest.param(edit("preprocess.size", "32"), "size must be an integer", id="size string"),
        pytest.param(edit("preprocess.size", 4096), "size must be an integer from 16 to 1024", id="size 4096"),
        pytest.param(edit("model.variants.fp32.file", 7),
                     "field model.variants.fp32.'file' must be a string, got an integer", id="file number"),
        pytest.param(edit("model.variants", {}), "'model.variants' is empty", id="no variants"),
        pytest.param(edit("model.variants", {"fp8": {"file": "model.onnx"}}), "unknown precision 'fp8'",
                     id="unknown precision"),
        pytest.param(edit("model.variants", {"fp32": {"file": "model.onnx"}, "fp16": {"file": "model.onnx"}}),
                     "variants share a member", id="shared member"),
        pytest.param(edit("model.variants.fp32", {"file": "model.onnx", "accuracy": {"auc": math.inf}}),
                     "field 'model.variants.fp32.accuracy.auc' is inf", id="inf in accuracy"),
        pytest.param(edit("model.variants.fp32", {"file": "model.onnx", "speed": 1}), "unknown fields \\['speed'\\]",
                     id="unknown variant field"),
        pytest.param(edit("threshold_source", ["x"]), "field 'threshold_source' must be a string", id="source list"),
        pytest.param(edit("provenance", {"parity": {"diff": math.nan}}), "field 'provenance.parity.diff' is nan",
                     id="NaN in provenance"),
        pytest.param(edit("surprise", 1), r"unknown fields \['surprise'\]", id="unknown field"),
        pytest.param(edit("provenance", {"runs": [{"scores": [0.5, math.inf]}]}),
                     r"field 'provenance.runs\[0\].scores\[1\]' is inf", id="inf deep in provenance"),
    ],
)
def test_manifest_types_are_exact_and_errors_name_the_field(tmp_path, change, message):
    manifest = Manifest(preprocess=PreprocessSpec(transform="clip", size=SIZE)).to_dict()
    graph = mean_graph(SIZE)
    manifest["files"] = {"model.onnx": {"sha256": hashlib.sha256(graph).hexdigest(), "size": len(graph)}}
    text = json.dumps(change(manifest)).encode()  # NaN and Infinity are written as the bare tokens
    refused(raw_package(tmp_path / "typed.dgs", text), message)


def deep_and_wide_architecture(path: Path) -> Path:
    """A package whose free-form architecture nests 200 objects under 2,000-character keys above 150,000 numbers:
    under 1 MiB of manifest, but 60 GB if every number carried its own copy of the path above it."""
    tree: object = [0] * 150_000
    for level in range(200):
        tree = {f"{level:04d}" + "k" * 1996: tree}
    return raw_package(path, {"architecture": tree})


def test_a_deep_and_wide_free_form_field_costs_memory_in_proportion_to_the_manifest(tmp_path):
    path = deep_and_wide_architecture(tmp_path / "deep.dgs")
    assert path.stat().st_size < 1024**2
    assert ModelPackage.load(path).manifest.architecture


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param({"size": -1}, "'size' is negative", id="negative size"),
        pytest.param({"size": "1"}, "'size' must be an integer, got a string", id="size string"),
        pytest.param({"size": True}, "'size' must be an integer, got a boolean", id="size true"),
        pytest.param({"sha256": "ABC"}, "not 64 lowercase hexadecimal digits", id="bad sha256"),
        pytest.param({"signature": "x"}, r"unknown fields \['signature'\]", id="unknown key"),
    ],
)
def test_member_entries_are_typed(tmp_path, entry, message):
    graph = mean_graph(SIZE)
    files = {"model.onnx": {"sha256": hashlib.sha256(graph).hexdigest(), "size": len(graph), **entry}}
    refused(raw_package(tmp_path / "files.dgs", {"files": files}), message)


# --- the graph must match its manifest ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        pytest.param(lambda: mean_graph(SIZE, input_dims=["batch", 3, "h", "w"]),
                     r"input 'image' has shape \[batch, 3, h, w\]", id="free height and width"),
        pytest.param(lambda: mean_graph(SIZE, input_dims=["batch", 3, 64, 64]),
                     r"shape \[batch, 3, 64, 64\].*gives \[B, 3, 32, 32\]", id="other size"),
        pytest.param(lambda: mean_graph(SIZE, output="pairs", declared=["batch", 2]),
                     r"output 'logit' has shape \['batch', 2\]", id="declared [B, 2]"),
        pytest.param(lambda: mean_graph(SIZE, output="scalar", declared=[]),
                     r"output 'logit' has shape \[\]", id="declared scalar"),
        pytest.param(lambda: mean_graph(SIZE, declared=[4]), r"output 'logit' has shape \[4\]",
                     id="fixed output, dynamic batch"),
    ],
)
def test_graph_interface_must_match_the_manifest_at_load(tmp_path, photo_folder, graph, message):
    path = raw_package(tmp_path / "graph.dgs", members={"model.onnx": graph()})
    refused(path, message)
    out = tmp_path / "results.csv"
    result = scan_cli(photo_folder, "--model", path, "--out", out)
    assert result.exit_code == 2 and str(path) in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("output", "shape"),
    [("double", r"\[4\]"), ("scalar", r"\[\]"), ("pairs", r"\[2, 2\]"), ("one", r"\[1\]")],
    ids=["[2B]", "scalar", "[B, 2]", "[1] whatever the batch"],
)
def test_graph_whose_output_is_not_one_logit_per_image_is_refused_at_load(tmp_path, photo_folder, output, shape):
    """Each declares [B] but computes something else: the run on two grey images at load shows it."""
    if output == "one":
        from onnx import helper

        reduce = helper.make_node("ReduceMean", ["mean"], ["all"], keepdims=1)  # [1]: one value for any batch
        identity = helper.make_node("Identity", ["all"], ["logit"])
        graph = mean_graph(SIZE, output="custom", extra_nodes=[reduce, identity])
    else:
        graph = mean_graph(SIZE, output=output)
    path = graph_package(tmp_path / "lying graph.dgs", graph, size=SIZE)
    with pytest.raises(ModelPackageError, match=f"output of shape {shape} for a batch of 2") as info:
        Detector(path)
    assert str(path) in str(info.value)
    out = tmp_path / "results.jsonl"
    result = scan_cli(photo_folder, "--model", path, "--out", out)
    assert result.exit_code == 2 and "one float logit per image" in result.stderr
    assert not out.exists()


def test_fixed_batch_graphs_are_smoke_checked_at_their_batch(tmp_path, photos):
    path = graph_package(tmp_path / "fixed.dgs", mean_graph(SIZE, batch=3), size=SIZE)
    detector = Detector(path, batch_size=2)
    assert detector.backend.fixed_batch == 3
    results = detector.predict([photos["coffee"]] * 5)
    assert all(r.ok for r in results) and len({round(r.probability, 6) for r in results}) == 1


# --- non-finite outputs ---------------------------------------------------------------------------------------------


def test_a_model_that_gives_nan_is_refused_at_load(tmp_path, photo_folder):
    path = graph_package(tmp_path / "nan.dgs", mean_graph(SIZE, output="nan"), size=SIZE)
    with pytest.raises(ModelPackageError, match=r"non-finite logit \(nan\) for a grey image"):
        Detector(path)
    result = scan_cli(photo_folder, "--model", path)
    assert result.exit_code == 2 and result.stdout == ""


def test_a_non_finite_logit_is_an_error_row_and_json_stays_json(tmp_path, photos):
    """sqrt(mean): finite on the grey image checked at load, NaN on darker-than-average images."""
    from onnx import helper

    graph = mean_graph(SIZE, output="custom", extra_nodes=[helper.make_node("Sqrt", ["mean"], ["logit"])])
    path = graph_package(tmp_path / "sqrt.dgs", graph, size=SIZE)
    folder = tmp_path / "in"
    write_image(folder / "dark.png", np.full((40, 40, 3), 5, np.uint8))
    write_image(folder / "bright.png", np.full((40, 40, 3), 250, np.uint8))
    out = tmp_path / "results.jsonl"
    result = scan_cli(folder, "--model", path, "--out", out)
    assert result.exit_code == 1, result.output

    def no_constants(token):
        raise AssertionError(f"bare {token} in JSON output")

    rows = {Path(r["path"]).name: r for r in map(lambda line: json.loads(line, parse_constant=no_constants),
                                                 out.read_text(encoding="utf-8").splitlines())}
    assert rows["bright.png"]["error"] is None and 0 < rows["bright.png"]["probability"] < 1
    assert rows["dark.png"]["probability"] is None and rows["dark.png"]["label"] is None
    assert "dark.png: the model's output for this image is not a finite number (nan)" in rows["dark.png"]["error"]


# --- what a graph may be ------------------------------------------------------------------------------------------


def loop_graph() -> bytes:
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["acc_in"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["batch"])],
    )
    trips = helper.make_tensor("trips", TensorProto.INT64, [], [10**15])
    loop = helper.make_node("Loop", ["trips", "", "mean"], ["logit"], body=body, name="forever")
    return mean_graph(SIZE, output="custom", extra_nodes=[loop], extra_initializers=[trips])


def custom_domain_graph() -> bytes:
    from onnx import helper

    return mean_graph(SIZE, output="custom", extra_nodes=[helper.make_node("Run", ["mean"], ["logit"], domain="x.y",
                                                                           name="plugin")])


def function_graph() -> bytes:
    import onnx
    from onnx import helper

    model = onnx.load_model_from_string(mean_graph(SIZE))
    model.functions.append(helper.make_function("local", "twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"],
                                                                                                     ["y"])],
                                                [helper.make_opsetid("", 18)]))
    return model.SerializeToString()


def many_nodes_graph() -> bytes:
    from onnx import helper

    chain = [helper.make_node("Identity", [f"x{i}"], [f"x{i + 1}"]) for i in range(100_001)]
    chain[0].input[0] = "mean"
    chain.append(helper.make_node("Identity", ["x100001"], ["logit"]))
    return mean_graph(SIZE, output="custom", extra_nodes=chain)


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        pytest.param(loop_graph, "node 'forever' is a Loop; a dgs model is a feed-forward network", id="Loop"),
        pytest.param(custom_domain_graph, "operator 'Run' of domain 'x.y'", id="custom domain"),
        pytest.param(function_graph, "defines local functions", id="local function"),
        pytest.param(many_nodes_graph, "has 100,003 nodes", id="100,003 nodes"),
        pytest.param(lambda: mean_graph(1024, batch=100), "a fixed batch of 100 images of 1024 x 1024",
                     id="fixed batch of 1.2 GB"),
    ],
)
def test_a_graph_is_a_bounded_feed_forward_network_of_standard_operators(tmp_path, graph, message):
    size = 1024 if "1024" in message else SIZE
    refused(raw_package(tmp_path / "graph.dgs", {"preprocess": PreprocessSpec(transform="clip", size=size).to_dict()},
                        members={"model.onnx": graph()}), message)


def test_a_run_that_ends_after_the_time_limit_is_refused_too(tmp_path, monkeypatch):
    """Cancellation acts between operators; a run whose last operator overran the limit is refused all the same."""
    path = graph_package(tmp_path / "quick.dgs", mean_graph(SIZE), size=SIZE)
    monkeypatch.setattr("dgs_sdk.backends.SMOKE_CHECK_SECONDS", 1e-9)
    with pytest.raises(ModelPackageError, match="took more than 1e-09 s to score two grey images at load"):
        Detector(path)


def test_the_load_time_run_has_a_time_limit(tmp_path, monkeypatch):
    """A graph that computes for a minute (a chain of 2048 x 2048 products on the input) is cancelled and refused."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2048, 2048], np.full(2048 * 2048, 1e-4, np.float32))
    nodes = [helper.make_node("ReduceMean", ["image"], ["level"], keepdims=0),  # depends on the input: not folded
             helper.make_node("Mul", ["w", "level"], ["m0"])]
    nodes += [helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]) for i in range(200)]
    nodes += [helper.make_node("ReduceMean", ["m200"], ["total"], keepdims=0),
              helper.make_node("Add", ["mean", "total"], ["logit"])]
    path = graph_package(tmp_path / "slow.dgs", mean_graph(SIZE, output="custom", extra_nodes=nodes,
                                                           extra_initializers=[weight]), size=SIZE)
    monkeypatch.setattr("dgs_sdk.backends.SMOKE_CHECK_SECONDS", 0.5)
    with pytest.raises(ModelPackageError, match="took more than 0.5 s to score two grey images at load"):
        Detector(path)


def test_the_zip_directory_is_bounded_before_it_is_parsed(tmp_path, monkeypatch):
    import dgs_sdk.package

    path = tmp_path / "zip64.dgs"
    with zipfile.ZipFile(path, "w") as zf:  # over 65,535 entries: the counts live in the ZIP64 end record
        for i in range(65_540):
            zf.writestr(f"e{i}", b"")
    parsed = []
    monkeypatch.setattr(dgs_sdk.package.zipfile, "ZipFile", lambda *a, **k: parsed.append(a) or 1 / 0)
    refused(path, "holds 65,540 members in a directory of")
    # The classic end record rewritten to claim 2 members: zip readers still take the ZIP64 counts, and so do we.
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    data[at + 8 : at + 16] = (2).to_bytes(2, "little") * 2 + (100).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    refused(path, "holds 65,540 members in a directory of")
    assert parsed == []


def test_all_members_together_are_bounded_and_only_the_model_is_held(tmp_path, monkeypatch):
    graph = mean_graph(SIZE)
    path = raw_package(tmp_path / "extra.dgs", members={"model.onnx": graph, "variant.onnx": b"\0" * 1_000_000})
    package = ModelPackage.load(path)
    assert list(package.members) == ["model.onnx"] and len(package.read_member("variant.onnx")) == 1_000_000
    monkeypatch.setattr("dgs_sdk.package.MAX_PACKAGE_CONTENT_BYTES", 1_000_000)
    refused(path, f"members of {1_000_000 + len(graph):,} bytes in all; the limit is 1,000,000")
