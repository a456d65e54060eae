"""The TensorRT backend, `dgs engine` and `dgs cache`.

TensorRT and a CUDA device are absent where these tests run, so all but the `trt`-marked test drive the
backend's own code through a stand-in at the TensorRT/pycuda boundary (`trt_standin`: NOT TensorRT; its "engine"
runs the ONNX graph with ONNX Runtime on the CPU). They show what the backend asks of TensorRT and pycuda, and
that it scores like ONNX Runtime when its engine computes what the graph says; they do not show that TensorRT
builds or runs these graphs. The `trt` test does, where TensorRT and a GPU are.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import trt_standin
from conftest import graph_package, mean_graph, variant_package
from dgs_sdk import Detector, ModelPackage
from dgs_sdk.backends import AUTO_ORDER, BACKENDS, create_backend
from dgs_sdk.backends.tensorrt import (
    DEFAULT_PROFILE,
    EngineOptions,
    TensorRTBackend,
    TensorRTError,
    engine_profile,
    prepare_engine,
)
from dgs_sdk.cli import main
from dgs_sdk.engine_cache import BatchProfile, EngineCache
from dgs_sdk.errors import BackendUnavailable, ModelPackageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache_folder(tmp_path, monkeypatch) -> Path:
    """Every test gets its own engine cache."""
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def mean_package(tmp_path) -> ModelPackage:
    return ModelPackage.load(graph_package(tmp_path / "mean.dgs", mean_graph()))


def images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


# -- availability and the no-GPU guard ------------------------------------------------------------------------


def test_registered_and_tried_first_by_auto():
    assert BACKENDS["tensorrt"] is TensorRTBackend
    assert AUTO_ORDER == ("tensorrt", "onnxruntime")
    assert TensorRTBackend.precisions == ("int8", "fp16", "fp32")


@pytest.mark.skipif(bool(__import__("importlib.util").util.find_spec("tensorrt")), reason="TensorRT is installed")
def test_unavailable_without_tensorrt(mean_package):
    assert not TensorRTBackend.is_available()
    assert "tensorrt cannot be imported" in TensorRTBackend.unavailable_reason()
    assert "pip install 'dgs[trt]'" in TensorRTBackend.unavailable_reason()
    assert create_backend("auto", mean_package).name == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="backend 'tensorrt' cannot be used here: tensorrt cannot be"):
        create_backend("tensorrt", mean_package)


@pytest.mark.parametrize("settings, reason", [
    ({"devices": []}, "no CUDA device here (the CUDA driver sees none)"),
    ({"driver_error": "cuInit failed: no CUDA-capable device is detected"},
     "no CUDA device here: the CUDA driver says cuInit failed: no CUDA-capable device is detected"),
])
def test_no_gpu_means_unavailable_and_tensorrt_is_never_touched(monkeypatch, mean_package, settings, reason):
    standin = trt_standin.install(monkeypatch, **settings)
    assert not TensorRTBackend.is_available()
    assert reason in TensorRTBackend.unavailable_reason()
    with pytest.raises(BackendUnavailable, match="no CUDA device here"):
        TensorRTBackend(mean_package)
    assert create_backend("auto", mean_package).name == "onnxruntime"  # auto falls through
    assert standin.trt_objects == 0  # with no device, TensorRT's runtime would crash the process


def test_available_with_tensorrt_pycuda_and_a_device(monkeypatch):
    trt_standin.install(monkeypatch)
    assert TensorRTBackend.is_available()
    assert TensorRTBackend.unavailable_reason() == ""


def test_availability_is_asked_once(monkeypatch):
    standin = trt_standin.install(monkeypatch)
    assert TensorRTBackend.is_available()
    standin.devices.clear()
    assert TensorRTBackend.is_available()  # cached: it is cheap after the first call


@pytest.mark.parametrize("device, message", [
    ("cpu", "TensorRT runs on CUDA devices only"),
    ("cuda:1", r"device cuda:1 does not exist: the CUDA driver sees 1 device\(s\), cuda:0 to cuda:0"),
    ("gpu", "device 'gpu' is not understood"),
])
def test_devices_it_cannot_use(monkeypatch, mean_package, device, message):
    standin = trt_standin.install(monkeypatch)
    with pytest.raises(BackendUnavailable, match=message):
        TensorRTBackend(mean_package, device)
    assert standin.trt_objects == 0


def test_runs_on_the_device_asked_for(monkeypatch, mean_package):
    standin = trt_standin.install(monkeypatch, devices=[("GPU zero", (8, 7)), ("GPU one", (9, 0))])
    backend = TensorRTBackend(mean_package, "cuda:1")
    assert backend.device == "cuda:1" and backend.gpu.name == "GPU one"
    assert backend.entry.fields["gpu"] == "GPU one" and backend.entry.fields["compute_capability"] == "9.0"
    assert backend.entry.fields["cuda"] == "12.6"
    assert standin.contexts == []  # every context pushed was popped


# -- building: typing, flags, profile -------------------------------------------------------------------------


@pytest.mark.parametrize("shape, flags", [
    ({"weak_typing": True, "strongly_typed_flag": True}, 1),  # 10.x: strongly typed asked for
    ({"weak_typing": False, "strongly_typed_flag": True}, 0),  # 11.x: always strongly typed, flag deprecated
    ({"weak_typing": False, "strongly_typed_flag": False}, 0),  # a TensorRT without the flag
])
def test_network_typing_follows_the_api(monkeypatch, tmp_path, shape, flags):
    standin = trt_standin.install(monkeypatch, **shape)
    package = ModelPackage.load(variant_package(tmp_path / "v.dgs", ("fp32", "fp16", "int8"), size=32))
    for precision in ("int8", "fp16", "fp32"):
        TensorRTBackend(package, precision=precision).run(images(3))
    assert standin.builds == 3
    assert standin.network_flags == [flags] * 3
    assert standin.builder_flags == []  # never a precision flag: the variant's graph says its precision


def test_builder_gets_the_workspace_and_the_profile(monkeypatch, mean_package):
    standin = trt_standin.install(monkeypatch)
    backend = TensorRTBackend(mean_package, options=EngineOptions(BatchProfile(2, 4, 8), workspace_mib=256))
    assert standin.memory_pool_limits == [(sys.modules["tensorrt"].MemoryPoolType.WORKSPACE, 256 << 20)]
    assert standin.profiles == [{"image": ((2, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))}]
    assert backend.profile == BatchProfile(2, 4, 8)
    assert backend.entry.fields["profile"] == "2:4:8" and backend.entry.fields["workspace_mib"] == 256


def test_default_profile(monkeypatch, mean_package):
    standin = trt_standin.install(monkeypatch)
    assert TensorRTBackend(mean_package).profile == DEFAULT_PROFILE == BatchProfile(1, 32, 32)
    assert standin.profiles == [{"image": ((1, 3, 32, 32), (32, 3, 32, 32), (32, 3, 32, 32))}]


def test_batches_outside_the_profile_are_split_or_padded(monkeypatch, mean_package):
    standin = trt_standin.install(monkeypatch)
    backend = TensorRTBackend(mean_package, options=EngineOptions(BatchProfile(2, 4, 4)))
    x = images(11)
    np.testing.assert_allclose(backend.run(x), x.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    assert standin.executions == 3  # 4 + 4 + 3
    one = images(1, seed=1)  # under the profile's minimum of 2: padded, and the padding's output dropped
    np.testing.assert_allclose(backend.run(one), one.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    assert backend.run(np.zeros((0, 3, 32, 32), np.float32)).shape == (0,)


def test_fixed_batch_graph_gets_its_batch_as_profile(monkeypatch, tmp_path):
    standin = trt_standin.install(monkeypatch)
    package = ModelPackage.load(graph_package(tmp_path / "fixed.dgs", mean_graph(batch=3)))
    backend = TensorRTBackend(package)
    assert backend.profile == BatchProfile(3, 3, 3) and backend.entry.fields["profile"] == "3:3:3"
    assert standin.profiles == []  # a static input has no optimisation profile to set
    x = images(7)
    np.testing.assert_allclose(backend.run(x), x.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    with pytest.raises(TensorRTError, match="takes batches of exactly 3 only"):
        TensorRTBackend(package, options=EngineOptions(BatchProfile(1, 8, 32)))
    assert TensorRTBackend(package, options=EngineOptions(BatchProfile(3, 3, 3))).built is False


def test_engine_profile_rules():
    assert engine_profile(None, None) == DEFAULT_PROFILE
    assert engine_profile(BatchProfile(1, 2, 3), None) == BatchProfile(1, 2, 3)
    assert engine_profile(None, 5) == BatchProfile(5, 5, 5)
    with pytest.raises(ValueError, match="exactly 5"):
        engine_profile(BatchProfile(1, 5, 5), 5)


def test_a_graph_tensorrt_cannot_parse_names_the_package(monkeypatch, tmp_path):
    from onnx import helper

    standin = trt_standin.install(monkeypatch)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["mean"], ["q", "q_scale", "q_zero"]),
             helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["logit"])]
    graph = mean_graph(output="custom", extra_nodes=nodes)
    package = ModelPackage.load(graph_package(tmp_path / "dq.dgs", graph))
    with pytest.raises(ModelPackageError, match=r"dq.dgs: model.onnx: TensorRT 10.3.0 cannot parse it \(In node 0: "
                                                "No importer registered for op: DynamicQuantizeLinear"):
        TensorRTBackend(package)
    assert standin.builds == 0 and EngineCache().entries() == []
    assert create_backend("onnxruntime", package).run(images(2)).shape == (2,)


def test_a_graph_with_the_wrong_output_is_refused_before_any_write(monkeypatch, tmp_path):
    trt_standin.install(monkeypatch)
    package = ModelPackage.load(graph_package(tmp_path / "double.dgs", mean_graph(output="double")))
    backend = TensorRTBackend(package)  # buffers sized from the output TensorRT reports for the largest batch
    with pytest.raises(ModelPackageError, match=r"gave float32 output of shape \[4\] for a batch of 2"):
        backend.run(images(2))
    with pytest.raises(ModelPackageError, match="for a grey image|output of shape"):
        create_backend("tensorrt", package)  # the smoke check refuses it at load


# -- precision ------------------------------------------------------------------------------------------------


def test_int8_cpu_is_refused_with_the_reason(monkeypatch, tmp_path):
    standin = trt_standin.install(monkeypatch)
    package = ModelPackage.load(variant_package(tmp_path / "v.dgs", ("fp32", "int8-cpu"), size=32))
    with pytest.raises(BackendUnavailable, match="int8-cpu variant holds ONNX Runtime's dynamic quantisation "
                                                 "operators, which TensorRT does not take"):
        TensorRTBackend(package, precision="int8-cpu")
    with pytest.raises(BackendUnavailable, match="the tensorrt backend does not run the 'int8-cpu' variant"):
        create_backend("tensorrt", package, precision="int8-cpu")
    assert standin.trt_objects == 0


@pytest.mark.parametrize("variants, chosen", [
    (("fp32", "fp16", "int8", "int8-cpu"), "int8"),
    (("fp32", "fp16", "int8-cpu"), "fp16"),
    (("fp32", "int8-cpu"), "fp32"),
])
def test_auto_takes_the_fastest_variant_the_package_has(monkeypatch, tmp_path, variants, chosen):
    trt_standin.install(monkeypatch)
    package = ModelPackage.load(variant_package(tmp_path / "v.dgs", variants, size=32))
    backend = create_backend("auto", package)
    assert (backend.name, backend.precision) == ("tensorrt", chosen)
    assert backend.entry.fields["onnx_sha256"] == package.variant_sha256(chosen)
    x = images(2)  # the i-th variant's logit is the mean times i + 1: the output tells which graph ran
    np.testing.assert_allclose(backend.run(x), x.mean(axis=(1, 2, 3)) * (variants.index(chosen) + 1), rtol=1e-5)


def test_auto_on_the_cpu_takes_onnx_runtime_even_where_tensorrt_works(monkeypatch, tmp_path):
    standin = trt_standin.install(monkeypatch)
    package = ModelPackage.load(variant_package(tmp_path / "v.dgs", ("fp32", "int8"), size=32))
    backend = create_backend("auto", package, device="cpu")
    assert (backend.name, backend.device, backend.precision) == ("onnxruntime", "cpu", "fp32")
    assert create_backend("auto", package).name == "tensorrt"
    with pytest.raises(BackendUnavailable, match="the tensorrt backend does not run on device 'cpu'"):
        create_backend("tensorrt", package, device="cpu")
    assert standin.builds == 1


# -- the cache, through the backend ---------------------------------------------------------------------------


def test_second_backend_loads_the_cached_engine(monkeypatch, mean_package, cache_folder):
    standin = trt_standin.install(monkeypatch)
    first = TensorRTBackend(mean_package)
    second = TensorRTBackend(mean_package)
    assert (first.built, second.built, standin.builds, standin.deserialized) == (True, False, 1, 2)
    assert second.entry.plan == first.entry.plan and first.entry.plan.parent == cache_folder / "engines"
    assert trt_standin.plan_header(first.entry.plan.read_bytes())["version"] == "10.3.0"  # a plain plan
    timing = EngineCache().timing_cache_path(_key(first))
    assert timing.read_bytes().startswith(b"DGS-STANDIN-TIMING 10.3.0\n")


def _key(backend: TensorRTBackend):
    from dgs_sdk.engine_cache import EngineKey

    f = backend.entry.fields
    return EngineKey(f["tensorrt"], f["gpu"], f["compute_capability"], f["cuda"], f["onnx_sha256"], f["precision"],
                     BatchProfile.parse(f["profile"]), f["workspace_mib"])


def test_another_tensorrt_builds_its_own_engine(monkeypatch, mean_package):
    trt_standin.install(monkeypatch, version="10.3.0")
    old = TensorRTBackend(mean_package)
    trt_standin.install(monkeypatch, version="10.4.1")
    new = TensorRTBackend(mean_package)
    assert new.built and new.entry.plan != old.entry.plan and "trt10.4.1" in new.entry.plan.name
    assert len(EngineCache().entries()) == 2


def test_a_plan_tensorrt_refuses_is_rebuilt_with_a_log_line(monkeypatch, mean_package, caplog):
    import hashlib
    import json

    trt_standin.install(monkeypatch)
    entry = TensorRTBackend(mean_package).entry
    plan = entry.plan.read_bytes().replace(b'"version": "10.3.0"', b'"version": "10.0.1"')
    entry.plan.write_bytes(plan)  # a plan of another TensorRT under this one's name; its sidecar agrees
    sidecar = json.loads(entry.sidecar.read_text())
    sidecar.update(plan_bytes=len(plan), plan_sha256=hashlib.sha256(plan).hexdigest())
    entry.sidecar.write_text(json.dumps(sidecar))
    standin = trt_standin.install(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="dgs_sdk.tensorrt"):
        backend = TensorRTBackend(mean_package)
    assert backend.built and standin.builds == 1
    assert "Version tag does not match" in caplog.text
    assert "cannot be deserialised by this TensorRT; removed, building it again" in caplog.text
    assert trt_standin.plan_header(backend.entry.plan.read_bytes())["version"] == "10.3.0"
    x = images(3)
    np.testing.assert_allclose(backend.run(x), x.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)


def test_without_options_the_engine_built_ahead_of_time_is_used(monkeypatch, mean_package):
    standin = trt_standin.install(monkeypatch)
    ahead = prepare_engine(mean_package, options=EngineOptions(BatchProfile(1, 4, 8), workspace_mib=512))
    later = TensorRTBackend(mean_package)
    assert (later.built, standin.builds, later.profile, later.entry.plan) == (False, 1, BatchProfile(1, 4, 8),
                                                                            ahead.entry.plan)
    explicit = TensorRTBackend(mean_package, options=EngineOptions())  # asked for the defaults: its own engine
    assert explicit.built and explicit.profile == DEFAULT_PROFILE


def test_concurrent_backends_build_once(monkeypatch, mean_package):
    import threading
    import time

    standin = trt_standin.install(monkeypatch)
    standin.build_hook = lambda: time.sleep(0.5)
    backends, errors = [], []

    def make() -> None:
        try:
            backends.append(TensorRTBackend(mean_package))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=make) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and standin.builds == 1
    assert sorted(b.built for b in backends) == [False, True]


# -- scoring real images --------------------------------------------------------------------------------------


def test_detector_scores_real_images_like_onnxruntime(monkeypatch, clip_package, photo_folder):
    standin = trt_standin.install(monkeypatch)
    files = sorted(str(p) for p in photo_folder.rglob("*") if p.is_file())
    reference = Detector(clip_package, backend="onnxruntime", precision="fp32").predict(files)
    detector = Detector(clip_package, backend="tensorrt", batch_size=3)
    assert detector.backend.name == "tensorrt" and detector.precision == "fp32"
    assert detector.backend.describe().startswith("tensorrt 10.3.0 on cuda:0 (Stand-in GPU), fp32, batch 1:32:32")
    got = detector.predict(files)
    assert [p.source for p in got] == files and all(p.ok for p in got)
    np.testing.assert_allclose([p.probability for p in got], [p.probability for p in reference], atol=1e-5)
    assert [p.label for p in got] == [p.label for p in reference]
    assert len({p.label for p in got}) == 2  # the images are told apart: the comparison means something
    assert standin.executions >= 3 and standin.contexts == []


def test_close_frees_device_memory(monkeypatch, mean_package):
    standin = trt_standin.install(monkeypatch)
    backend = TensorRTBackend(mean_package)
    assert len(standin.memory) == 2
    backend.close()
    assert standin.memory == {} and standin.contexts == []
    backend.close()  # twice is harmless


# -- the command line -----------------------------------------------------------------------------------------


def _plain_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert f"Error: {message}" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


@pytest.mark.skipif(bool(__import__("importlib.util").util.find_spec("tensorrt")), reason="TensorRT is installed")
def test_engine_command_without_tensorrt(mean_package):
    result = CliRunner().invoke(main, ["engine", str(mean_package.path)])
    _plain_error(result, "backend 'tensorrt' cannot be used here: tensorrt cannot be imported")


def test_engine_command_without_a_gpu(monkeypatch, mean_package):
    standin = trt_standin.install(monkeypatch, devices=[])
    result = CliRunner().invoke(main, ["engine", str(mean_package.path)])
    _plain_error(result, "backend 'tensorrt' cannot be used here: no CUDA device here")
    assert standin.trt_objects == 0


@pytest.mark.parametrize("args, message", [
    (["--batch", "8:2:32"], "needs min <= opt <= max"),
    (["--batch", "x"], "not understood"),
    (["--workspace", "0"], "0 is not in the range"),
    (["--precision", "int8-cpu"], "'int8-cpu' is not one of"),
])
def test_engine_command_checks_its_options(monkeypatch, mean_package, args, message):
    standin = trt_standin.install(monkeypatch)
    result = CliRunner().invoke(main, ["engine", str(mean_package.path), *args])
    assert result.exit_code == 2 and message in result.output
    assert standin.trt_objects == 0


def test_engine_command_refuses_a_variant_the_package_lacks(monkeypatch, mean_package):
    trt_standin.install(monkeypatch)
    result = CliRunner().invoke(main, ["engine", str(mean_package.path), "--precision", "int8"])
    _plain_error(result, f"{mean_package.path}: ")
    assert "int8" in result.output


def test_engine_info_and_cache_commands(monkeypatch, mean_package, cache_folder):
    trt_standin.install(monkeypatch)
    runner = CliRunner()
    built = runner.invoke(main, ["engine", str(mean_package.path), "--batch", "1:4:8", "--workspace", "256"])
    assert built.exit_code == 0, built.output
    plan = next((cache_folder / "engines").glob("*.plan"))
    assert f"engine: {plan}" in built.output
    assert "built in " in built.output
    assert "fp32, batch 1:4:8, workspace 256 MiB" in built.output and "Stand-in GPU" in built.output
    again = runner.invoke(main, ["engine", str(mean_package.path), "--batch", "1:4:8", "--workspace", "256"])
    assert again.exit_code == 0 and "found in the cache (built " in again.output and f"engine: {plan}" in again.output
    info = runner.invoke(main, ["info"])
    assert info.exit_code == 0, info.output
    assert "backends: tensorrt (available), onnxruntime (available)" in info.output
    assert f"TensorRT engines in {cache_folder / 'engines'}: 1" in info.output and plan.name in info.output
    assert f"package {mean_package.path}, fp32, batch 1:4:8" in info.output
    listed = runner.invoke(main, ["cache", "list"])
    assert listed.exit_code == 0 and plan.name in listed.output
    cleared = runner.invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0, cleared.output
    assert f"removed {plan}" in cleared.output and f"removed {plan.with_suffix('.json')}" in cleared.output
    assert "3 file(s) removed from" in cleared.output  # the plan, its sidecar, the timing cache
    assert not list((cache_folder / "engines").glob("*.plan"))
    assert "nothing to remove in" in runner.invoke(main, ["cache", "clear"]).output
    assert f"TensorRT engines in {cache_folder / 'engines'}: none" in runner.invoke(main, ["info"]).output


@pytest.mark.skipif(bool(__import__("importlib.util").util.find_spec("tensorrt")), reason="TensorRT is installed")
def test_engine_command_in_a_real_process(mean_package, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("sdk", "trainer", "export")),
           "DGS_CACHE_DIR": str(tmp_path / "cache dir ñ")}
    done = subprocess.run([sys.executable, "-m", "dgs_sdk.cli", "engine", str(mean_package.path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: backend 'tensorrt' cannot be used here: tensorrt cannot be imported")
    assert "Traceback" not in done.stderr


# -- the real thing -------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_real_pycuda_and_gpu_with_tensorrt_standing_in(monkeypatch, mean_package, tmp_path):
    """Everything but TensorRT real: the CUDA driver probe, primary context, page-locked buffers, device memory,
    asynchronous copies and stream through pycuda on a GPU; the stand-in engine reads its input from and writes
    its output to that GPU memory."""
    cuda = pytest.importorskip("pycuda.driver")
    standin = trt_standin.install(monkeypatch, real_cuda=cuda)
    backend = TensorRTBackend(mean_package, options=EngineOptions(BatchProfile(2, 4, 4)))
    gpu = backend.gpu
    assert gpu.name and gpu.compute_capability.count(".") == 1 and gpu.driver.count(".") == 1
    x = images(11)
    np.testing.assert_allclose(backend.run(x), x.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    assert standin.executions == 3
    fixed = ModelPackage.load(graph_package(tmp_path / "fixed.dgs", mean_graph(batch=3)))
    np.testing.assert_allclose(TensorRTBackend(fixed).run(x), x.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    backend.close()
    assert cuda.Context.get_current() is None  # every context pushed was popped


@pytest.mark.trt
def test_real_tensorrt_engine_scores_like_onnxruntime(mean_package):
    """With TensorRT and a GPU: build a real engine, load it again from the cache, compare with ONNX Runtime."""
    if not TensorRTBackend.is_available():
        pytest.skip(TensorRTBackend.unavailable_reason())
    backend = prepare_engine(mean_package, options=EngineOptions(BatchProfile(1, 4, 8)))
    x = images(11)
    expected = create_backend("onnxruntime", mean_package).run(x)
    np.testing.assert_allclose(backend.run(x), expected, rtol=1e-4, atol=1e-5)
    again = TensorRTBackend(mean_package)
    assert not again.built and again.entry.plan == backend.entry.plan
    np.testing.assert_allclose(again.run(x), expected, rtol=1e-4, atol=1e-5)
