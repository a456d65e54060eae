"""The TensorRT engine cache: folder, key, file names, atomic writes, locking between threads and processes, clearing.

Plans here are opaque bytes: the cache never looks inside them (TensorRT's part is in test_tensorrt_backend.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dgs_sdk.engine_cache import BatchProfile, EngineCache, EngineCacheError, EngineKey, cache_dir, describe_engines

SDK = str(Path(__file__).resolve().parents[1] / "sdk")
KEY = EngineKey(tensorrt="10.3.0", gpu="Orin", compute_capability="8.7", cuda="12.6", onnx_sha256="ab" * 32,
                precision="fp16", profile=BatchProfile(1, 8, 32), workspace_mib=1024)


def test_cache_folder_from_the_environment(tmp_path):
    home = Path.home()
    assert cache_dir({"DGS_CACHE_DIR": str(tmp_path / "mine"), "XDG_CACHE_HOME": "/xdg"}) == tmp_path / "mine"
    assert cache_dir({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/dgs")
    assert cache_dir({"DGS_CACHE_DIR": "", "XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/dgs")  # empty is unset
    assert cache_dir({"XDG_CACHE_HOME": "relative/cache"}) == home / ".cache" / "dgs"  # XDG wants it absolute
    assert cache_dir({}) == home / ".cache" / "dgs"
    assert cache_dir({"DGS_CACHE_DIR": "~/somewhere"}) == home / "somewhere"


def test_engines_live_in_the_engines_sub_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "c"))
    cache = EngineCache()
    assert cache.folder == tmp_path / "c" / "engines"
    assert cache.plan_path(KEY).parent == cache.folder


def test_key_follows_the_documented_recipe():
    canonical = ('{"cache_format":1,"compute_capability":"8.7","cuda":"12.6","gpu":"Orin","onnx_sha256":"'
                 + "ab" * 32 + '","precision":"fp16","profile":"1:8:32","tensorrt":"10.3.0","workspace_mib":1024}')
    assert KEY.digest == hashlib.sha256(canonical.encode("ascii")).hexdigest()
    assert KEY.file_stem == f"fp16-b1-8-32-trt10.3.0-sm87-{KEY.digest}"
    assert replace(KEY).digest == KEY.digest  # same inputs, same key


@pytest.mark.parametrize("change", [
    {"tensorrt": "10.3.1"}, {"gpu": "NVIDIA H100 80GB HBM3"}, {"compute_capability": "9.0"}, {"cuda": "12.8"},
    {"onnx_sha256": "cd" * 32}, {"precision": "int8"}, {"profile": BatchProfile(1, 16, 32)},
    {"profile": BatchProfile(2, 8, 32)}, {"profile": BatchProfile(1, 8, 64)}, {"workspace_mib": 2048},
])
def test_every_field_changes_the_key(change):
    other = replace(KEY, **change)
    assert other.digest != KEY.digest
    assert other.file_stem != KEY.file_stem


def test_odd_characters_of_a_version_stay_out_of_file_names():
    key = replace(KEY, tensorrt="10.3.0+cuda/12 x")
    assert key.file_stem.startswith("fp16-b1-8-32-trt10.3.0_cuda_12_x-sm87-")
    assert key.timing_cache_stem == "timing-10.3.0_cuda_12_x-sm87"


@pytest.mark.parametrize("text, expected", [("1:8:32", (1, 8, 32)), (" 4:4:4 ", (4, 4, 4)), ("16", (16, 16, 16))])
def test_batch_profile_parses(text, expected):
    p = BatchProfile.parse(text)
    assert (p.min, p.opt, p.max) == expected
    assert BatchProfile.parse(str(p)) == p


@pytest.mark.parametrize("text, message", [
    ("8:1:32", "min <= opt <= max"), ("1:64:32", "min <= opt <= max"), ("0:1:2", "at least 1"),
    ("1:8", "not understood"), ("a:b:c", "not understood"), ("1:-2:3", "not understood"), ("", "not understood"),
])
def test_batch_profile_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        BatchProfile.parse(text)


def test_store_writes_the_plan_then_its_sidecar(tmp_path):
    cache = EngineCache(tmp_path)
    entry = cache.store(KEY, b"PLAN" * 1000, package="/models/a.dgs", build_seconds=12.3456)
    assert cache.plan_path(KEY).read_bytes() == b"PLAN" * 1000  # the plan alone: no header of ours
    sidecar = json.loads(cache.sidecar_path(KEY).read_text())
    assert sidecar["key"] == KEY.digest and sidecar["fields"] == KEY.fields()
    assert sidecar["package"] == "/models/a.dgs" and sidecar["build_seconds"] == 12.346
    assert sidecar["plan_bytes"] == 4000 and sidecar["plan_sha256"] == hashlib.sha256(b"PLAN" * 1000).hexdigest()
    found = cache.lookup(KEY)
    assert found == entry
    assert cache.read_plan(found) == b"PLAN" * 1000
    assert cache.lookup(replace(KEY, precision="fp32")) is None


def test_a_plan_that_does_not_match_its_sidecar_is_not_used(tmp_path):
    cache = EngineCache(tmp_path)
    entry = cache.store(KEY, b"A" * 100, "a.dgs", 1.0)
    cache.plan_path(KEY).write_bytes(b"B" * 100)  # same size, other content
    assert cache.read_plan(entry) is None
    cache.plan_path(KEY).write_bytes(b"A" * 99)
    assert cache.lookup(KEY) is None
    cache.plan_path(KEY).unlink()
    assert cache.lookup(KEY) is None


def test_a_plan_without_its_sidecar_does_not_count(tmp_path):
    cache = EngineCache(tmp_path)
    cache.folder.mkdir(parents=True)
    cache.plan_path(KEY).write_bytes(b"orphan")
    assert cache.lookup(KEY) is None
    cache.sidecar_path(KEY).write_text("{not json")
    assert cache.lookup(KEY) is None
    assert cache.entries() == []


def test_get_or_build_builds_once_then_loads(tmp_path):
    cache = EngineCache(tmp_path)
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"plan-1"

    engine, entry, built = cache.get_or_build(KEY, lambda plan: ("engine", plan), build, "a.dgs")
    assert (engine, built, len(builds)) == (("engine", b"plan-1"), True, 1)
    engine, entry2, built = cache.get_or_build(KEY, lambda plan: ("engine", plan), build, "a.dgs")
    assert (engine, built, len(builds), entry2.plan) == (("engine", b"plan-1"), False, 1, entry.plan)


def test_a_plan_the_runtime_refuses_is_removed_and_rebuilt(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"built by another TensorRT", "a.dgs", 1.0)
    loads = []

    def load(plan: bytes):
        loads.append(plan)
        return None if plan == b"built by another TensorRT" else "engine"

    with caplog.at_level(logging.WARNING, logger="dgs_sdk.tensorrt"):
        engine, entry, built = cache.get_or_build(KEY, load, lambda: b"fresh plan", "a.dgs")
    assert (engine, built) == ("engine", True)
    assert loads == [b"built by another TensorRT", b"fresh plan"]  # the refused plan is not tried twice
    assert cache.plan_path(KEY).read_bytes() == b"fresh plan"
    assert "cannot be deserialised by this TensorRT; removed, building it again" in caplog.text
    assert cache.plan_path(KEY).name in caplog.text


def test_a_damaged_plan_is_rebuilt(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"good plan", "a.dgs", 1.0)
    cache.plan_path(KEY).write_bytes(b"bad  plan")  # same size: only the sha256 tells
    with caplog.at_level(logging.WARNING, logger="dgs_sdk.tensorrt"):
        engine, _, built = cache.get_or_build(KEY, lambda plan: plan.decode(), lambda: b"good plan", "a.dgs")
    assert (engine, built) == ("good plan", True)
    assert "does not match its sidecar" in caplog.text


def test_a_plan_that_fails_right_after_its_build_is_an_error_and_not_kept(tmp_path):
    cache = EngineCache(tmp_path)
    with pytest.raises(EngineCacheError, match="cannot deserialise the engine it has just built"):
        cache.get_or_build(KEY, lambda plan: None, lambda: b"plan", "a.dgs")
    assert cache.lookup(KEY) is None and not cache.plan_path(KEY).exists()


def test_a_failed_build_leaves_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def build() -> bytes:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        cache.get_or_build(KEY, lambda plan: "engine", build, "a.dgs")
    assert [p.name for p in cache.folder.iterdir()] == ["locks"]


def test_a_write_that_fails_midway_leaves_no_plan(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(EngineCacheError, match="No space left on device"):
        cache.store(KEY, b"x" * 100_000, "a.dgs", 1.0)
    assert sorted(p.name for p in cache.folder.iterdir()) == []


_KILLED_WRITER = """
import os, sys, time
from dgs_sdk.engine_cache import BatchProfile, EngineCache, EngineKey
key = EngineKey("10.3.0", "Orin", "8.7", "12.6", "ab" * 32, "fp16", BatchProfile(1, 8, 32), 1024)
def stuck(fd):
    print("writing", flush=True)
    time.sleep(60)
os.fsync = stuck
EngineCache(sys.argv[1]).store(key, b"x" * 5_000_000, "a.dgs", 1.0)
"""


def test_a_writer_killed_mid_write_leaves_no_plan(tmp_path):
    """A process killed while its plan is half on disk: readers see no plan, and the next writer cleans up."""
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": SDK})
    assert child.stdout.readline().strip() == b"writing"
    cache = EngineCache(tmp_path)
    tmp = [p.name for p in cache.folder.iterdir() if p.suffix == ".tmp"]
    assert len(tmp) == 1 and tmp[0].startswith(cache.plan_path(KEY).name)
    assert cache.lookup(KEY) is None and not cache.plan_path(KEY).exists()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert cache.lookup(KEY) is None and not cache.plan_path(KEY).exists()
    cache.store(KEY, b"whole plan", "a.dgs", 1.0)  # the next writer removes the dead one's temporary file
    assert sorted(p.name for p in cache.folder.iterdir() if p.is_file()) == sorted(
        [cache.plan_path(KEY).name, cache.sidecar_path(KEY).name])


def test_two_threads_build_once(tmp_path):
    cache = EngineCache(tmp_path)
    builds, results, started = [], [], threading.Event()

    def build() -> bytes:
        builds.append(threading.get_ident())
        started.set()
        time.sleep(0.5)
        return b"the plan"

    def worker() -> None:
        results.append(cache.get_or_build(KEY, lambda plan: plan, build, "a.dgs"))

    first = threading.Thread(target=worker)
    first.start()
    started.wait(5)
    second = threading.Thread(target=worker)  # arrives while the first builds
    second.start()
    first.join(10)
    second.join(10)
    assert len(builds) == 1
    assert sorted(built for _, _, built in results) == [False, True]
    assert {engine for engine, _, _ in results} == {b"the plan"}


_BUILDER = """
import sys, time
from pathlib import Path
from dgs_sdk.engine_cache import BatchProfile, EngineCache, EngineKey
key = EngineKey("10.3.0", "Orin", "8.7", "12.6", "ab" * 32, "fp16", BatchProfile(1, 8, 32), 1024)
log = Path(sys.argv[2])
def build():
    with log.open("a") as f:
        f.write("build\\n")
    time.sleep(1.5)
    return b"plan of " + sys.argv[3].encode()
engine, entry, built = EngineCache(sys.argv[1]).get_or_build(key, lambda plan: plan.decode(), build, "a.dgs")
print(engine, built)
"""


def test_two_processes_build_once_and_the_second_uses_the_first_plan(tmp_path, caplog):
    log = tmp_path / "builds.log"
    env = {**os.environ, "PYTHONPATH": SDK}
    first = subprocess.Popen([sys.executable, "-c", _BUILDER, str(tmp_path), str(log), "first"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:  # the first is building
        time.sleep(0.05)
    second = subprocess.Popen([sys.executable, "-c", _BUILDER, str(tmp_path), str(log), "second"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out1, _ = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert log.read_text() == "build\n"
    assert out1.decode().split() == ["plan", "of", "first", "True"]
    assert out2.decode().split() == ["plan", "of", "first", "False"]
    assert b"waiting for another process to finish with the engine" in err2


def test_timing_cache_is_per_tensorrt_version_and_gpu(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.read_timing_cache(KEY) == b""
    cache.store_timing_cache(KEY, b"timings")
    assert cache.read_timing_cache(KEY) == b"timings"
    assert cache.read_timing_cache(replace(KEY, precision="int8", onnx_sha256="cd" * 32)) == b"timings"
    assert cache.read_timing_cache(replace(KEY, tensorrt="10.4.0")) == b""
    assert cache.read_timing_cache(replace(KEY, compute_capability="9.0")) == b""
    assert cache.timing_cache_path(KEY).name == "timing-10.3.0-sm87.cache"


def test_find_for_target_ignores_profile_and_workspace_only(tmp_path):
    cache = EngineCache(tmp_path)
    built = replace(KEY, profile=BatchProfile(1, 4, 8), workspace_mib=512)
    cache.store(built, b"plan", "a.dgs", 1.0)
    found = cache.find_for_target(KEY)
    assert found is not None and found.profile == BatchProfile(1, 4, 8) and found.fields["workspace_mib"] == 512
    for change in ({"precision": "fp32"}, {"onnx_sha256": "cd" * 32}, {"gpu": "other"}, {"tensorrt": "10.4.0"},
                   {"cuda": "12.8"}, {"compute_capability": "9.0"}):
        assert cache.find_for_target(replace(KEY, **change)) is None, change


@pytest.mark.parametrize("bad", [{"profile": "8:4:1"}, {"profile": None}, {"workspace_mib": "lots"}])
def test_find_for_target_passes_over_a_hand_written_sidecar_no_build_would_write(tmp_path, bad):
    """Its digest matches its fields, but the profile or workspace does not parse: not an engine to reuse."""
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"plan", "a.dgs", 1.0)
    sidecar = json.loads(cache.sidecar_path(KEY).read_text())
    sidecar["fields"].update(bad)
    sidecar["key"] = hashlib.sha256(json.dumps(sidecar["fields"], sort_keys=True, separators=(",", ":"))
                                    .encode("ascii")).hexdigest()
    cache.sidecar_path(KEY).write_text(json.dumps(sidecar))
    assert cache.find_for_target(KEY) is None


def test_clear_removes_engines_timing_caches_and_orphans_only(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"plan one", "a.dgs", 1.0)
    other = replace(KEY, precision="int8")
    cache.store(other, b"plan two", "b.dgs", 2.0)
    cache.store_timing_cache(KEY, b"timings")
    (cache.folder / "orphan.plan").write_bytes(b"x")
    (cache.folder / "notes.txt").write_text("not ours")
    assert {e.package for e in cache.entries()} == {"a.dgs", "b.dgs"}
    removed = cache.clear()
    assert {p.name for p in removed} == {
        cache.plan_path(KEY).name, cache.sidecar_path(KEY).name, cache.plan_path(other).name,
        cache.sidecar_path(other).name, cache.timing_cache_path(KEY).name, "orphan.plan"}
    assert {p.name for p in cache.folder.iterdir() if p.is_file()} == {"notes.txt"}
    assert cache.clear() == []
    assert EngineCache(tmp_path / "never made").clear() == []


def test_clear_keeps_an_engine_another_process_holds(tmp_path):
    from filelock import FileLock

    cache = EngineCache(tmp_path)
    cache.store(KEY, b"plan", "a.dgs", 1.0)
    holder = FileLock(cache.folder / "locks" / f"{KEY.digest}.lock")
    done = threading.Event()
    removed: list = []

    def clear_in_another_thread() -> None:  # a lock held elsewhere: another thread stands for another process
        removed.extend(cache.clear())
        done.set()

    with holder:
        thread = threading.Thread(target=clear_in_another_thread)
        thread.start()
        assert done.wait(10)
    assert removed == []
    assert cache.lookup(KEY) is not None


def test_describe_engines_lists_path_package_precision_and_size(tmp_path):
    cache = EngineCache(tmp_path)
    assert describe_engines(cache) == [f"TensorRT engines in {cache.folder}: none"]
    cache.store(KEY, b"p" * 2_500_000, "/models/a.dgs", 83.25)
    head, name, details = describe_engines(cache)
    assert head == f"TensorRT engines in {cache.folder}: 1"
    assert name.strip() == cache.plan_path(KEY).name
    assert "package /models/a.dgs, fp16, batch 1:8:32, 2.5 MB, TensorRT 10.3.0 on Orin" in details
    assert "in 83.2 s" in details or "in 83.3 s" in details


def test_an_unwritable_cache_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(EngineCacheError, match="DGS_CACHE_DIR"):
        EngineCache(blocker).get_or_build(KEY, lambda plan: plan, lambda: b"plan", "a.dgs")
