"""The TensorRT engine cache: where engines built on this machine are kept, under which key, and how processes
share them.

An engine (a TensorRT plan) is only valid for the TensorRT version, the GPU and the CUDA driver it was built with,
and for the ONNX graph, precision, batch profile and builder options it was built from. All of these make its key;
a change to any of them names another engine, which is built on first use.

Folder: ``$DGS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/dgs``, else ``~/.cache/dgs``; engines live in its
``engines/`` sub-folder::

    engines/
    ├── <name>.plan                  a plain TensorRT plan: `trtexec --loadEngine=<name>.plan` runs it
    ├── <name>.json                  its sidecar: {"key", "fields", "package", "built", "build_seconds",
    │                                "plan_bytes", "plan_sha256"}
    ├── timing-<trt>-sm<cc>.cache    the builder's timing cache for one TensorRT version and GPU architecture
    └── locks/<key>.lock             the lock of one key (and ``timing-<trt>-sm<cc>.lock``); empty files

Key fields, all of them strings except ``cache_format`` and ``workspace_mib`` (integers)::

    cache_format        1 (this recipe's version)
    tensorrt            TensorRT's version, as its Python module reports it ("10.3.0")
    gpu                 the GPU's name, as the CUDA driver reports it ("Orin")
    compute_capability  "<major>.<minor>" ("8.7")
    cuda                the CUDA driver's version, "<major>.<minor>" (12060 -> "12.6")
    onnx_sha256         sha256 of the package member that was built (the precision variant's ONNX file)
    precision           the variant: "fp32", "fp16" or "int8"
    profile             the optimisation profile's batch sizes, "<min>:<opt>:<max>" ("1:32:32")
    workspace_mib       the builder's workspace limit in MiB

Key recipe: ``key = sha256(canonical JSON of the fields).hexdigest()`` (64 lowercase hexadecimal digits), where
the canonical JSON is one object with its keys sorted by code point, no whitespace (``{"a":1,"b":"x"}``), strings
in double quotes with ``"`` and ``\\`` escaped by a backslash and every character outside printable ASCII as
``\\uXXXX``, integers in decimal, encoded as ASCII. (Python: ``json.dumps(fields, sort_keys=True,
separators=(",", ":"), ensure_ascii=True)``.)

File name: ``<precision>-b<min>-<opt>-<max>-trt<tensorrt>-sm<major><minor>-<key>`` + ``.plan`` / ``.json``, where
any character of the TensorRT version outside ``[A-Za-z0-9._-]`` is written ``_``; only the key makes it unique,
the rest is for the reader. Example: ``fp16-b1-32-32-trt10.3.0-sm87-5f0c...e2.plan``.

Sharing: plans, sidecars and timing caches are written under a temporary name and renamed into place
(`dgs_sdk.files.AtomicFile`), so no reader ever sees half a file, and a crash mid-write leaves no plan. The plan
is written before its sidecar, and an engine counts as cached only when both are there and the sidecar's size
and sha256 match the plan. Building takes the key's lock (filelock), and looks again once it holds it: of two
processes that need the same engine, the second waits for the first and then uses its plan. The timing cache
is read when a build starts and replaced, under its own lock, when it ends (the last build's cache wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from .errors import DgsError
from .files import AtomicFile

__all__ = [
    "CACHE_FORMAT",
    "BatchProfile",
    "CachedEngine",
    "EngineCache",
    "EngineCacheError",
    "EngineKey",
    "cache_dir",
    "canonical_json",
    "describe_engines",
]

CACHE_FORMAT = 1
ENGINES = "engines"
LOCKS = "locks"
_VERSION_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_KEY = re.compile(r"[0-9a-f]{64}")
_MAX_SIDECAR_BYTES = 1 << 20
log = logging.getLogger("dgs_sdk.tensorrt")
T = TypeVar("T")


class EngineCacheError(DgsError):
    """The engine cache folder cannot be used (not writable, not a folder) or a lock cannot be taken."""


# Under the cache folder beside engines/: `dgs distill`'s cache of teacher outputs (dgs_trainer.teacher_cache).
TEACHER_OUTPUTS_DIR = "teacher-outputs"


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """dgs's cache folder: ``$DGS_CACHE_DIR``, else ``$XDG_CACHE_HOME/dgs``, else ``~/.cache/dgs``.

    Empty variables count as unset (as the XDG specification says); a relative ``XDG_CACHE_HOME`` is ignored
    (it must be absolute).
    """
    env = os.environ if environ is None else environ
    if env.get("DGS_CACHE_DIR"):
        return Path(env["DGS_CACHE_DIR"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "dgs"
    return Path.home() / ".cache" / "dgs"


def canonical_json(fields: dict[str, Any]) -> str:
    """The key fields as the key recipe writes them (see the module's docstring)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes of a TensorRT optimisation profile: the engine takes any batch from ``min`` to ``max``
    and is tuned for ``opt``."""

    min: int = 1
    opt: int = 32
    max: int = 32

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"batch profile: {name} must be a whole number of at least 1, got {value!r}")
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile {self}: needs min <= opt <= max")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"MIN:OPT:MAX"`` (``"1:8:32"``), or one number N for N:N:N."""
        parts = text.strip().split(":")
        if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"batch profile {text!r} is not understood (expected MIN:OPT:MAX such as 1:8:32, "
                             "or one number)")
        numbers = [int(p) for p in parts]
        return cls(*numbers) if len(numbers) == 3 else cls(numbers[0], numbers[0], numbers[0])

    @classmethod
    def fixed(cls, batch: int) -> BatchProfile:
        return cls(batch, batch, batch)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes a plan valid or not; see the module's docstring for the fields' meaning."""

    tensorrt: str
    gpu: str
    compute_capability: str
    cuda: str
    onnx_sha256: str
    precision: str
    profile: BatchProfile
    workspace_mib: int

    def fields(self) -> dict[str, Any]:
        return {
            "cache_format": CACHE_FORMAT,
            "tensorrt": self.tensorrt,
            "gpu": self.gpu,
            "compute_capability": self.compute_capability,
            "cuda": self.cuda,
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision,
            "profile": str(self.profile),
            "workspace_mib": self.workspace_mib,
        }

    @property
    def digest(self) -> str:
        """The key: sha256 of the canonical JSON of `fields`."""
        return hashlib.sha256(canonical_json(self.fields()).encode("ascii")).hexdigest()

    @property
    def file_stem(self) -> str:
        p = self.profile
        trt = _VERSION_CHARS.sub("_", self.tensorrt)
        sm = self.compute_capability.replace(".", "")
        return f"{self.precision}-b{p.min}-{p.opt}-{p.max}-trt{trt}-sm{sm}-{self.digest}"

    @property
    def timing_cache_stem(self) -> str:
        return f"timing-{_VERSION_CHARS.sub('_', self.tensorrt)}-sm{self.compute_capability.replace('.', '')}"

    def same_target(self, fields: dict[str, Any]) -> bool:
        """Whether a sidecar's ``fields`` describe an engine of this graph for this GPU, TensorRT and CUDA, whatever
        its profile and workspace."""
        mine = self.fields()
        return all(fields.get(k) == mine[k] for k in mine if k not in ("profile", "workspace_mib"))


@dataclass
class CachedEngine:
    """One engine in the cache, as its sidecar describes it."""

    plan: Path
    sidecar: Path
    key: str
    fields: dict[str, Any]
    package: str
    built: str
    build_seconds: float
    plan_bytes: int
    plan_sha256: str

    @property
    def precision(self) -> str:
        return str(self.fields.get("precision", "?"))

    @property
    def profile(self) -> BatchProfile:
        return BatchProfile.parse(str(self.fields["profile"]))


class EngineCache:
    """The engines folder of a cache folder (`cache_dir` by default)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self.folder = self.root / ENGINES

    def plan_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.file_stem}.plan"

    def sidecar_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.file_stem}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.timing_cache_stem}.cache"

    def _lock(self, name: str):
        from filelock import FileLock

        locks = self.folder / LOCKS
        try:
            locks.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EngineCacheError(f"{locks}: the engine cache folder cannot be made ({e.strerror or e}); set "
                                   "DGS_CACHE_DIR to a writable folder") from None
        return FileLock(locks / f"{name}.lock")

    def _hold(self, lock, what: str):
        """Take ``lock``, saying so first when another process holds it."""
        from filelock import Timeout

        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("waiting for another process to finish with %s", what)
            lock.acquire()
        return lock

    # -- reading ------------------------------------------------------------------------------------------

    def lookup(self, key: EngineKey) -> CachedEngine | None:
        """The cached engine of ``key``, if both its plan and its sidecar are there and agree."""
        entry = self._read_sidecar(self.sidecar_path(key))
        if entry is None or entry.key != key.digest or entry.plan != self.plan_path(key):
            return None
        try:
            if entry.plan.stat().st_size != entry.plan_bytes:
                return None
        except OSError:
            return None
        return entry

    def read_plan(self, entry: CachedEngine) -> bytes | None:
        """The plan's bytes, or None when it is gone or does not match its sidecar's sha256."""
        try:
            data = entry.plan.read_bytes()
        except OSError:
            return None
        if len(data) != entry.plan_bytes or hashlib.sha256(data).hexdigest() != entry.plan_sha256:
            return None
        return data

    def _read_sidecar(self, path: Path) -> CachedEngine | None:
        try:
            if path.stat().st_size > _MAX_SIDECAR_BYTES:
                return None
            d = json.loads(path.read_text("utf-8"))
            entry = CachedEngine(
                plan=path.with_suffix(".plan"), sidecar=path, key=str(d["key"]), fields=dict(d["fields"]),
                package=str(d.get("package", "")), built=str(d.get("built", "")),
                build_seconds=float(d.get("build_seconds", 0.0)), plan_bytes=int(d["plan_bytes"]),
                plan_sha256=str(d["plan_sha256"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return entry if _KEY.fullmatch(entry.key) else None

    def entries(self) -> list[CachedEngine]:
        """Every engine in the cache whose sidecar reads, newest first."""
        try:
            sidecars = sorted(self.folder.glob("*.json"))
        except OSError:
            return []
        found = [e for e in map(self._read_sidecar, sidecars) if e is not None and e.plan.exists()]
        return sorted(found, key=lambda e: e.built, reverse=True)

    def find_for_target(self, key: EngineKey) -> CachedEngine | None:
        """The newest cached engine of the same graph, precision, GPU, TensorRT and CUDA as ``key``, whatever its
        profile and workspace (an engine `dgs engine` built ahead of time with its own ``--batch``)."""
        for entry in self.entries():
            if entry.key == _digest_of(entry.fields) and key.same_target(entry.fields):
                try:  # a sidecar written by hand may hold a matching digest of fields no build would write
                    entry.profile, int(entry.fields["workspace_mib"])
                except (KeyError, TypeError, ValueError):
                    continue
                return entry
        return None

    # -- writing ------------------------------------------------------------------------------------------

    def store(self, key: EngineKey, plan: bytes, package: str, build_seconds: float) -> CachedEngine:
        """Write ``plan`` and then its sidecar, each atomically. The caller holds the key's lock."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with AtomicFile(self.plan_path(key)) as out:
                out.file.write(plan)
                os.fsync(out.file.fileno())
            sidecar = {
                "key": key.digest,
                "fields": key.fields(),
                "package": package,
                "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": round(build_seconds, 3),
                "plan_bytes": len(plan),
                "plan_sha256": hashlib.sha256(plan).hexdigest(),
            }
            with AtomicFile(self.sidecar_path(key)) as out:
                out.file.write(json.dumps(sidecar, indent=2).encode("utf-8"))
        except OSError as e:
            raise EngineCacheError(f"{self.folder}: the engine cannot be written ({e.strerror or e}); set "
                                   "DGS_CACHE_DIR to a writable folder") from None
        return CachedEngine(plan=self.plan_path(key), sidecar=self.sidecar_path(key), key=key.digest,
                            fields=sidecar["fields"], package=package, built=sidecar["built"],
                            build_seconds=sidecar["build_seconds"], plan_bytes=len(plan),
                            plan_sha256=sidecar["plan_sha256"])

    def remove(self, entry: CachedEngine) -> None:
        """Remove an engine: its sidecar first (so that it stops counting), then its plan."""
        for path in (entry.sidecar, entry.plan):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def read_timing_cache(self, key: EngineKey) -> bytes:
        try:
            return self.timing_cache_path(key).read_bytes()
        except OSError:
            return b""

    def store_timing_cache(self, key: EngineKey, data: bytes) -> None:
        """Replace the timing cache of ``key``'s TensorRT version and GPU, atomically and under its lock."""
        if not data:
            return
        with self._hold(self._lock(key.timing_cache_stem), "the timing cache"):
            try:
                with AtomicFile(self.timing_cache_path(key)) as out:
                    out.file.write(data)
            except OSError as e:
                log.warning("%s: the timing cache was not saved (%s)", self.timing_cache_path(key), e.strerror or e)

    # -- the whole flow -----------------------------------------------------------------------------------

    def get_or_build(
        self,
        key: EngineKey,
        load: Callable[[bytes], T | None],
        build: Callable[[], bytes],
        package: str,
    ) -> tuple[T, CachedEngine, bool]:
        """The engine of ``key``: loaded from the cache, or built, stored and loaded.

        ``load(plan)`` deserialises a plan and returns None when TensorRT refuses it (another version's plan, a
        damaged file): such a plan is removed, with a log line, and built again. ``build()`` returns a new plan.
        Building happens under the key's lock, after looking again: a process that waited for another's build
        uses its plan. Returns the loaded engine, its cache entry and whether it was built now.

        Raises:
            EngineCacheError: the cache folder cannot be written.
        """
        entry = self.lookup(key)
        if entry is not None:  # the common case, without waiting on a lock: files appear whole or not at all
            plan = self.read_plan(entry)
            engine = load(plan) if plan is not None else None
            if engine is not None:
                return engine, entry, False
        with self._hold(self._lock(key.digest), f"the engine {self.plan_path(key).name}"):
            refused = entry
            entry = self.lookup(key)
            if entry is not None:
                plan = self.read_plan(entry)
                already_tried = refused is not None and refused.plan_sha256 == entry.plan_sha256
                engine = load(plan) if plan is not None and not already_tried else None
                if engine is not None:  # another process rebuilt it meanwhile
                    return engine, entry, False
                why = "does not match its sidecar" if plan is None else "cannot be deserialised by this TensorRT"
                log.warning("%s: cached engine %s; removed, building it again", entry.plan, why)
                self.remove(entry)
            started = time.monotonic()
            plan = build()
            entry = self.store(key, plan, package, time.monotonic() - started)
        engine = load(plan)
        if engine is None:
            self.remove(entry)
            raise EngineCacheError(f"{entry.plan}: TensorRT cannot deserialise the engine it has just built; "
                                   "removed")
        return engine, entry, True

    # -- listing and clearing -----------------------------------------------------------------------------

    def clear(self) -> list[Path]:
        """Remove every engine, timing cache and left-over temporary file, except the engines whose lock another
        process holds (being built or checked right now). Returns the files removed."""
        from filelock import Timeout

        removed: list[Path] = []
        kept: set[Path] = set()
        if not self.folder.is_dir():
            return removed
        for entry in self.entries():
            lock = self._lock(entry.key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.warning("%s: being built or checked by another process; kept", entry.plan)
                kept |= {entry.plan, entry.sidecar}
                continue
            try:
                self.remove(entry)
                removed += [entry.plan, entry.sidecar]
            finally:
                lock.release()
        # What is left: plans without a sidecar, sidecars that do not read, timing caches, temporary files of
        # writers that were killed.
        for pattern in ("*.plan", "*.json", "timing-*.cache", "*.tmp"):
            for path in sorted(self.folder.glob(pattern)):
                if path in kept or path.suffix == ".tmp" and _writer_alive(path):
                    continue
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
        return removed


def _digest_of(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(fields).encode("ascii")).hexdigest()


def _writer_alive(tmp: Path) -> bool:
    """Whether the process named in an `AtomicFile` temporary name (``<name>.<pid>-<token>.tmp``) still runs."""
    middle = tmp.name[: -len(".tmp")].rsplit(".", 1)[-1]
    pid = middle.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def describe_engines(cache: EngineCache | None = None) -> list[str]:
    """Lines that list the cached engines (plan, package, precision, batch profile, size), for `dgs info`."""
    cache = cache or EngineCache()
    entries = cache.entries()
    lines = [f"TensorRT engines in {cache.folder}: {len(entries) or 'none'}"]
    for e in entries:
        lines.append(f"  {e.plan.name}")
        lines.append(f"    package {e.package}, {e.precision}, batch {e.fields.get('profile')}, "
                     f"{e.plan_bytes / 1e6:.1f} MB, TensorRT {e.fields.get('tensorrt')} on {e.fields.get('gpu')}, "
                     f"built {e.built} in {e.build_seconds:.1f} s")
    return lines
