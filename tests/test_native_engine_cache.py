"""The C++ engine cache (dgs_native) against dgs_sdk.engine_cache: the same key for the same fields, plans
stored by one loaded by the other, damaged entries refused by both, and a lock that excludes across the two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from dgs_sdk.engine_cache import BatchProfile, EngineCache, EngineKey, canonical_json

dgs_native = pytest.importorskip("dgs_native")

SHA = "5f0c" + "e2" * 30

KEYS = [
    EngineKey("10.3.0", "Orin", "8.7", "12.6", SHA, "fp16", BatchProfile(1, 32, 32), 1024),
    EngineKey("11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0", "13.0", "0" * 64, "int8", BatchProfile(4, 4, 4), 1),
    EngineKey("10.13.3.9.post1", "NVIDIA GeForce RTX 4090", "8.9", "12.8", SHA, "fp32", BatchProfile(1, 8, 32), 4096),
    # Names a driver could report: non-ASCII, astral, quotes, backslashes, control characters, DEL.
    EngineKey("10.3.0+cuda12/ü", "Jetson Orin Nano (Développeur) 😀", "8.7", "12.6", SHA, "fp16",
              BatchProfile(1, 1, 1), 2048),
    EngineKey('10"3\\0', 'GPU "x"\\y\n\t\r\b\f\x01\x7f\x80\u2028', "10.0", "12.10", SHA, "fp16",
              BatchProfile(2, 16, 64), 0),
]


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.tensorrt)
def test_key_equals_python(key):
    native = dgs_native.engine_key(key.fields())
    assert native["canonical_json"] == canonical_json(key.fields())
    assert native["digest"] == key.digest
    assert native["file_stem"] == key.file_stem
    assert native["timing_cache_stem"] == key.timing_cache_stem


@pytest.mark.parametrize("value", [
    {"b": 1, "a": [True, False, None, -3, "é"], "é": {"z": "", "Z": "\u0000"}},
    {"\U0001f600": "\ud7ff\ue000\uffff", "": 0},
    [1, {"k": "v"}],
])
def test_canonical_json_of_any_fields(value):
    assert dgs_native.canonical_json(json.dumps(value)) == canonical_json(value)


def test_key_refuses_bad_fields():
    fields = KEYS[0].fields()
    with pytest.raises(dgs_native.InvalidArgument, match="profile"):
        dgs_native.engine_key({**fields, "profile": "32:1:1"})
    with pytest.raises(dgs_native.InvalidArgument, match="workspace_mib"):
        dgs_native.engine_key({**fields, "workspace_mib": "1024"})
    with pytest.raises(dgs_native.InvalidArgument, match="cache_format"):
        dgs_native.engine_key({**fields, "cache_format": 2})


@pytest.mark.parametrize(("environ", "expected"), [
    ({"DGS_CACHE_DIR": "/srv/dgs cache/", "XDG_CACHE_HOME": "/xdg"}, "/srv/dgs cache"),
    ({"DGS_CACHE_DIR": "", "XDG_CACHE_HOME": "/xdg//c/"}, "/xdg/c/dgs"),
    ({"DGS_CACHE_DIR": "", "XDG_CACHE_HOME": "relative"}, None),
    ({"DGS_CACHE_DIR": "~/x/./y", "XDG_CACHE_HOME": ""}, None),
    ({"DGS_CACHE_DIR": "", "XDG_CACHE_HOME": ""}, None),
])
def test_cache_dir_follows_python(monkeypatch, tmp_path, environ, expected):
    from dgs_sdk.engine_cache import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home ü"))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert dgs_native.cache_dir() == str(cache_dir())
    if expected is not None:
        assert dgs_native.cache_dir() == expected


def _plan(size: int = 3000) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(size))


def test_python_stores_cpp_loads(tmp_path):
    cache = EngineCache(tmp_path / "cache ü")
    key = KEYS[3]
    cache.store(key, _plan(), "models/a.dgs", 12.3456)
    assert dgs_native.cache_load(str(cache.root), key.fields()) == _plan()
    # Another key of the same target is not this engine.
    other = EngineKey(**{**key.__dict__, "workspace_mib": 1})
    assert dgs_native.cache_load(str(cache.root), other.fields()) is None


def test_cpp_stores_python_loads_and_lists(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    key = KEYS[0]
    plan_path = dgs_native.cache_store(str(cache.root), key.fields(), _plan(), "models/ü.dgs", 61.23456)
    assert plan_path == str(cache.plan_path(key))
    entry = cache.lookup(key)
    assert entry is not None and cache.read_plan(entry) == _plan()
    sidecar = json.loads(cache.sidecar_path(key).read_text("utf-8"))
    assert list(sidecar) == ["key", "fields", "package", "built", "build_seconds", "plan_bytes", "plan_sha256"]
    assert sidecar["fields"] == key.fields() and list(sidecar["fields"]) == list(key.fields())
    assert (sidecar["package"], sidecar["build_seconds"], sidecar["plan_bytes"]) == ("models/ü.dgs", 61.235, 3000)
    assert cache.sidecar_path(key).read_bytes().isascii()
    # `dgs engine list` shows it (describe_engines reads the same sidecars).
    assert [e.plan for e in cache.entries()] == [cache.plan_path(key)]
    assert cache.find_for_target(EngineKey(**{**key.__dict__, "profile": BatchProfile(1, 1, 1)})) is not None
    assert not list(cache.folder.glob("*.tmp"))


def test_find_for_target_agrees(tmp_path):
    cache = EngineCache(tmp_path)
    built = EngineKey(**{**KEYS[0].__dict__, "profile": BatchProfile(1, 8, 8), "workspace_mib": 512})
    cache.store(built, _plan(10), "a.dgs", 1.0)
    found = dgs_native.cache_find_for_target(str(tmp_path), KEYS[0].fields())
    assert found == built.fields() == cache.find_for_target(KEYS[0]).fields
    other_gpu = EngineKey(**{**KEYS[0].__dict__, "gpu": "Thor"})
    assert dgs_native.cache_find_for_target(str(tmp_path), other_gpu.fields()) is None


@pytest.mark.parametrize("damage", ["plan-bytes", "plan-truncated", "plan-missing", "sidecar-key", "sidecar-json",
                                    "sidecar-huge", "sidecar-missing", "sidecar-sha"])
def test_damaged_entry_is_not_loaded(tmp_path, damage):
    cache = EngineCache(tmp_path)
    key = KEYS[1]
    cache.store(key, _plan(), "a.dgs", 1.0)
    plan, sidecar = cache.plan_path(key), cache.sidecar_path(key)
    d = json.loads(sidecar.read_text())
    if damage == "plan-bytes":
        data = bytearray(plan.read_bytes())
        data[100] ^= 1
        plan.write_bytes(bytes(data))
    elif damage == "plan-truncated":
        plan.write_bytes(_plan()[:-1])
    elif damage == "plan-missing":
        plan.unlink()
    elif damage == "sidecar-key":
        sidecar.write_text(json.dumps({**d, "key": KEYS[0].digest}))
    elif damage == "sidecar-json":
        sidecar.write_text(sidecar.read_text()[:-2])
    elif damage == "sidecar-huge":
        sidecar.write_text(json.dumps({**d, "package": "x" * (1 << 20)}))
    elif damage == "sidecar-missing":
        sidecar.unlink()
    elif damage == "sidecar-sha":
        sidecar.write_text(json.dumps({**d, "plan_sha256": "0" * 64}))
    python = cache.lookup(key)
    assert python is None or cache.read_plan(python) is None
    assert dgs_native.cache_load(str(tmp_path), key.fields()) is None


_HOLD = """
import sys, time
import dgs_native
lock = dgs_native.EngineLock(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def _holder(lock_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", _HOLD, str(lock_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_lock_path_is_pythons(tmp_path):
    cache = EngineCache(tmp_path)
    key = KEYS[0]
    assert dgs_native.cache_lock_path(str(tmp_path), key.digest) == str(cache._lock(key.digest).lock_file)


def test_python_lock_makes_cpp_wait(tmp_path):
    cache = EngineCache(tmp_path)
    lock = cache._lock(KEYS[0].digest)
    lock.acquire(timeout=5)
    holder = _holder(Path(lock.lock_file))
    try:
        time.sleep(0.8)
        assert holder.poll() is None and not _ready(holder, 0.0)  # still waiting: Python holds it
        lock.release()
        assert _ready(holder, 20.0), holder.stderr.read() if holder.poll() is not None else "no lock in 20 s"
        # Now C++ holds it, Python cannot take it.
        with pytest.raises(Timeout):
            FileLock(lock.lock_file).acquire(timeout=0.2)
    finally:
        _finish(holder)
    FileLock(lock.lock_file).acquire(timeout=5)  # released when the C++ holder let go


def test_cpp_lock_excludes_python(tmp_path):
    path = Path(dgs_native.cache_lock_path(str(tmp_path), KEYS[2].digest))
    holder = _holder(path)
    try:
        assert _ready(holder, 20.0), "the C++ lock was not taken in 20 s"
        with pytest.raises(Timeout):
            FileLock(path).acquire(timeout=0.3)
        with dgs_native.EngineLock(str(path.parent / "other.lock")) as other:  # another name does not wait
            assert other.held
        assert not other.held
    finally:
        _finish(holder)
    with FileLock(path, timeout=5):
        pass


def _ready(process: subprocess.Popen, timeout: float) -> bool:
    """Whether the holder printed "held" within ``timeout`` seconds."""
    import select

    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            return process.stdout.readline().strip() == "held"
        if time.monotonic() >= deadline:
            return False


def _finish(process: subprocess.Popen) -> None:
    try:
        process.communicate("\n", timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
