"""The `.dgs` model package: one zip holding the model file(s) and a manifest that says how to use them.

Layout::

    model.dgs (zip)
    ├── manifest.json   format version, preprocessing spec, output meaning, threshold, architecture,
    │                   training provenance, and the sha256 and size of every other member
    └── model.onnx      the inference graph: image batch [B, 3, S, S] float32 -> logit of "fake" [B]

TensorRT engines are not stored: they are built and cached on the target device from the ONNX member.

A package is untrusted input: loading reads only a regular file, bounds every size before reading (the zip,
the manifest, each member against the size its manifest and the zip declare), takes the manifest's JSON and
types exactly (duplicate keys or members, strings for numbers, NaN are errors naming the field), verifies
every member's sha256 as it streams, and checks the ONNX graph (`dgs_sdk.onnx_graph`) before any runtime
sees it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ModelPackageError
from .files import AtomicFile, open_regular
from .limits import (
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    MAX_PACKAGE_BYTES,
    MAX_PACKAGE_CONTENT_BYTES,
    MAX_ZIP_DIRECTORY_BYTES,
)
from .onnx_graph import GraphInterface, check_onnx_graph
from .preprocess import PreprocessSpec

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "ModelPackage", "write_package"]

FORMAT_NAME = "dgs-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
OUTPUT_MEANING = "logit of 'fake'"
MANIFEST_KEYS = frozenset({"format", "format_version", "model", "preprocess", "threshold", "threshold_source",
                           "architecture", "provenance", "files", "created"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
# Zip end records (APPNOTE 4.3.16, 4.3.15, 4.3.14): signature, then the fields up to the entry count and size.
_EOCD_SIGNATURE, _EOCD = b"PK\x05\x06", struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR_SIGNATURE, _ZIP64_LOCATOR = b"PK\x06\x07", struct.Struct("<4sLQL")
_ZIP64_END_SIGNATURE, _ZIP64_END = b"PK\x06\x06", struct.Struct("<4sQ2H2L4Q")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _type_name(value: Any) -> str:
    return {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """``d[key]``, which must be of exactly ``kind`` (a bool is no number); ``default`` when absent, if given."""
    if key not in d:
        if default is ...:
            raise ValueError(f"required field {where}{key!r} is missing")
        return default
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        expected = " or ".join(_type_name(k()) for k in kinds)
        raise ValueError(f"field {where}{key!r} must be {expected}, got {_type_name(value)} ({value!r:.60})")
    return value


def _free_form(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An object whose content is free, except that every number in it must be finite (JSON has no NaN)."""
    value = _get(d, key, dict, "", {})
    stack: list[tuple[str, Any]] = [(key, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"field {where!r} is {item}, not a finite number")
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return value


def _only_keys(d: Mapping[str, Any], known: AbstractSet[str], where: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where or 'the manifest'} has unknown fields {unknown} (known: {sorted(known)})")


def _strict_json(raw: bytes) -> Any:
    """JSON as written by `write_package`: UTF-8, no duplicate keys, bounded nesting.

    NaN and Infinity tokens parse (to floats) so that the field holding one is named by its check.
    """

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"duplicate keys {duplicates}")
        return dict(pairs)

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=unique)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None


@dataclass
class Manifest:
    """What a model package says about its model.

    Attributes:
        preprocess: the preprocessing every caller must apply (see `dgs_sdk.preprocess`).
        model_file: name of the ONNX member.
        threshold: probability of "fake" at or above which an image is labelled fake.
        threshold_source: ``"default"`` or ``"calibrated"`` (chosen on a validation set).
        architecture: what the network is (backbone, method, input size...), free-form.
        provenance: how it was trained (method, data, epochs, code revision...), free-form.
        input_name / output_name: tensor names in the ONNX graph.
        files: member name -> {"sha256", "size"}; filled in by `write_package`.
        created: UTC time the package was written (ISO 8601).
    """

    preprocess: PreprocessSpec
    model_file: str = "model.onnx"
    threshold: float = 0.5
    threshold_source: str = "default"
    architecture: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    input_name: str = "image"
    output_name: str = "logit"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": {
                "file": self.model_file,
                "format": "onnx",
                "input": self.input_name,
                "output": self.output_name,
                "output_meaning": OUTPUT_MEANING,
            },
            "preprocess": self.preprocess.to_dict(),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "architecture": self.architecture,
            "provenance": self.provenance,
            "files": self.files,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "manifest") -> Manifest:
        """Parse and validate a manifest; errors name ``source`` and the offending field."""
        if not isinstance(d, Mapping):
            raise ModelPackageError(f"{source}: is not a JSON object")
        if d.get("format") != FORMAT_NAME:
            raise ModelPackageError(f"{source}: not a dgs model manifest (format is {d.get('format')!r:.60})")
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ModelPackageError(f"{source}: format_version missing or not an integer ({version!r:.60})")
        if version > FORMAT_VERSION:
            raise ModelPackageError(
                f"{source}: format version {version} is newer than this SDK reads ({FORMAT_VERSION}); upgrade dgs"
            )
        if version < 1:
            raise ModelPackageError(f"{source}: format version {version} is not valid")
        try:
            return cls._parse(d)
        except (TypeError, ValueError) as e:
            raise ModelPackageError(f"{source}: {e}") from None

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> Manifest:
        _only_keys(d, MANIFEST_KEYS, "")
        model = _get(d, "model", dict, "")
        _only_keys(model, {"file", "format", "input", "output", "output_meaning"}, "field 'model'")
        if _get(model, "format", str, "model.") != "onnx":
            raise ValueError(f"model format {model['format']!r:.60} is not supported (expected onnx)")
        threshold = _get(d, "threshold", (int, float), "", 0.5)
        if not (0.0 <= threshold <= 1.0 and math.isfinite(threshold)):  # compared first: a huge int has no float
            raise ValueError(f"field 'threshold' ({threshold}) is not a probability in [0, 1]")
        files = _get(d, "files", dict, "")
        for member, meta in files.items():
            where = f"files[{member!r}]."
            _get(files, member, dict, "files.")  # each entry is an object
            _only_keys(meta, {"sha256", "size"}, f"field files[{member!r}]")
            if not _SHA256.fullmatch(_get(meta, "sha256", str, where)):
                raise ValueError(f"field {where}'sha256' is not 64 lowercase hexadecimal digits")
            if _get(meta, "size", int, where) < 0:
                raise ValueError(f"field {where}'size' is negative ({meta['size']})")
        return cls(
            preprocess=PreprocessSpec.from_dict(_get(d, "preprocess", dict, "")),
            model_file=_get(model, "file", str, "model."),
            threshold=float(threshold),
            threshold_source=_get(d, "threshold_source", str, "", "default"),
            architecture=_free_form(d, "architecture"),
            provenance=_free_form(d, "provenance"),
            input_name=_get(model, "input", str, "model.", "image"),
            output_name=_get(model, "output", str, "model.", "logit"),
            files=files,
            created=_get(d, "created", str, "", ""),
        )


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, keep: bool) -> tuple[bytes, str]:
    """A member's sha256, streamed (never more than the size the zip declares), and its bytes if ``keep``."""
    digest, chunks, total = hashlib.sha256(), [], 0
    with zf.open(info) as member:
        while chunk := member.read(_CHUNK):
            total += len(chunk)
            if total > info.file_size:
                raise ModelPackageError(f"{name}: member {info.filename!r} is larger than the zip declares")
            digest.update(chunk)
            if keep:
                chunks.append(chunk)
    return b"".join(chunks), digest.hexdigest()


@dataclass
class ModelPackage:
    """A loaded and verified `.dgs` package: its manifest, the bytes of its members and its graph's interface."""

    path: Path
    manifest: Manifest
    members: dict[str, bytes]
    interface: GraphInterface | None = None

    @property
    def model_bytes(self) -> bytes:
        return self.members[self.manifest.model_file]

    @property
    def model_sha256(self) -> str:
        return self.manifest.files[self.manifest.model_file]["sha256"]

    @property
    def fixed_batch(self) -> int | None:
        """The graph's fixed batch size, or None when its batch axis is dynamic."""
        return self.check_graph().batch

    def check_graph(self, name: str | None = None) -> GraphInterface:
        """Check the ONNX member against the manifest (`check_onnx_graph`) once; errors name the package as
        ``name`` (its path by default)."""
        if self.interface is None:
            m = self.manifest
            where = f"{name or os.fspath(self.path)}: {m.model_file}"
            self.interface = check_onnx_graph(self.model_bytes, m.input_name, m.output_name, m.preprocess.size, where)
        return self.interface

    @classmethod
    def load(cls, path: str | os.PathLike, name: str | None = None) -> ModelPackage:
        """Read a package, verify its manifest, the size and sha256 of every member, and its ONNX graph.

        Only the model member is kept in memory; the others are verified as they stream by and read again, and
        verified again, by `read_member`. Errors name the package as ``name`` (its path by default).

        Raises:
            ModelPackageError: not a regular file, not a zip, a bad manifest, missing, extra, duplicate or
                oversized members, a checksum mismatch, or a graph that does not match its manifest.
        """
        path = Path(path)
        name = name or os.fspath(path)
        manifest, members = _open_zip(path, name, lambda zf: _read_members(zf, name))
        package = cls(path=path, manifest=manifest, members=members)
        package.check_graph(name)
        return package

    def read_member(self, member: str) -> bytes:
        """The bytes of a member the manifest lists, verified against its checksum again."""
        if member in self.members:
            return self.members[member]
        if member not in self.manifest.files:
            listed = ", ".join(self.manifest.files)
            raise ModelPackageError(f"{self.path}: has no member {member!r} (members: {listed})")
        name = os.fspath(self.path)

        def read(zf: zipfile.ZipFile) -> bytes:
            data, digest = _read_member(zf, zf.getinfo(member), name, keep=True)
            if digest != self.manifest.files[member]["sha256"]:
                raise ModelPackageError(f"{name}: member {member!r} fails its checksum; the package was modified")
            return data

        return _open_zip(self.path, name, read)


def _zip_directory_size(file: BinaryIO, size: int, name: str) -> tuple[int, int]:
    """Entries and bytes of a zip's central directory, from its end records, before anything parses it.

    Every count a zip reader might take is considered and the largest wins: the classic end record's, the ZIP64
    end record just before the ZIP64 locator (where Python's zipfile looks) and the one the locator points at.
    """
    tail = min(size, _EOCD.size + 65535)  # the end record, then a comment of up to 64 kB
    file.seek(size - tail)
    data = file.read(tail)
    at = data.rfind(_EOCD_SIGNATURE)
    if at < 0 or at + _EOCD.size > len(data):
        raise ModelPackageError(f"{name}: not a dgs model package (not a zip file)")
    *_, entries, directory, _, _ = _EOCD.unpack_from(data, at)
    counts = [] if entries == 0xFFFF or directory == 0xFFFFFFFF else [(entries, directory)]
    locator = size - tail + at - _ZIP64_LOCATOR.size  # where a ZIP64 locator would start
    if locator >= 0:
        file.seek(locator)
        raw = file.read(_ZIP64_LOCATOR.size)
        if raw[:4] == _ZIP64_LOCATOR_SIGNATURE:
            _, _, pointed, _ = _ZIP64_LOCATOR.unpack(raw)
            for record in {locator - _ZIP64_END.size, pointed}:
                if 0 <= record <= size - _ZIP64_END.size:
                    file.seek(record)
                    raw = file.read(_ZIP64_END.size)
                    if raw[:4] == _ZIP64_END_SIGNATURE:
                        *_, entries, directory, _ = _ZIP64_END.unpack(raw)
                        counts.append((entries, directory))
    if not counts:
        raise ModelPackageError(f"{name}: damaged zip (its ZIP64 end record is missing)")
    file.seek(0)
    return max(c[0] for c in counts), max(c[1] for c in counts)


def _open_zip(path: Path, name: str, read):
    """``read(zipfile)`` on the package at ``path``, a regular file whose zip directory is bounded; zip and I/O
    errors become `ModelPackageError` naming the package as ``name``."""
    try:
        file, size = open_regular(path, MAX_PACKAGE_BYTES, ModelPackageError)
    except ModelPackageError as e:
        raise ModelPackageError(str(e).replace(os.fspath(path), name, 1)) from None
    try:
        with file:
            entries, directory = _zip_directory_size(file, size, name)
            if entries > MAX_MEMBERS or directory > MAX_ZIP_DIRECTORY_BYTES:
                raise ModelPackageError(f"{name}: holds {entries:,} members in a directory of {directory:,} bytes; a "
                                        f"model package has at most {MAX_MEMBERS} members")
            with zipfile.ZipFile(file) as zf:
                return read(zf)
    except (zipfile.BadZipFile, zlib.error, EOFError, struct.error):
        raise ModelPackageError(f"{name}: not a dgs model package (not a zip file, or a damaged one)") from None
    except (RuntimeError, NotImplementedError) as e:  # encrypted members, unknown compression methods
        raise ModelPackageError(f"{name}: a member cannot be read ({e})") from None
    except OSError as e:
        raise ModelPackageError(f"{name}: cannot be read ({e.strerror or e})") from None


def _read_members(zf: zipfile.ZipFile, name: str) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and the model member of an open package, every member's size and checksum verified."""
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.filename in by_name:
            raise ModelPackageError(f"{name}: member {info.filename!r} appears twice in the zip")
        by_name[info.filename] = info
    if MANIFEST_NAME not in by_name:
        raise ModelPackageError(f"{name}: not a dgs model package (no {MANIFEST_NAME} inside)")
    manifest_info = by_name.pop(MANIFEST_NAME)
    size = manifest_info.file_size
    if size > MAX_MANIFEST_BYTES:
        raise ModelPackageError(f"{name}: {MANIFEST_NAME} declares {size:,} bytes; the limit is {MAX_MANIFEST_BYTES:,}")
    try:
        raw = _strict_json(_read_member(zf, manifest_info, name, keep=True)[0])
    except ValueError as e:
        raise ModelPackageError(f"{name}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    manifest = Manifest.from_dict(raw, source=f"{name}: {MANIFEST_NAME}")
    if manifest.model_file not in manifest.files:
        raise ModelPackageError(f"{name}: manifest has no checksum for model file {manifest.model_file!r}")
    unlisted = sorted(set(by_name) - set(manifest.files))
    if unlisted:
        raise ModelPackageError(f"{name}: members {unlisted} are not listed (with a checksum) in the manifest")
    missing = sorted(set(manifest.files) - set(by_name))
    if missing:
        raise ModelPackageError(f"{name}: members {missing} listed in the manifest are missing")
    for member, meta in manifest.files.items():
        declared = by_name[member].file_size
        if declared != meta["size"] or declared > MAX_MEMBER_BYTES:
            raise ModelPackageError(
                f"{name}: member {member!r} is {declared:,} bytes in the zip and {meta['size']:,} in the "
                f"manifest; they must agree and be at most {MAX_MEMBER_BYTES:,}"
            )
    total = sum(info.file_size for info in by_name.values())
    if total > MAX_PACKAGE_CONTENT_BYTES:
        limit = MAX_PACKAGE_CONTENT_BYTES
        raise ModelPackageError(f"{name}: members of {total:,} bytes in all; the limit is {limit:,}")
    members = {}
    for member, meta in manifest.files.items():
        keep = member == manifest.model_file
        data, actual = _read_member(zf, by_name[member], name, keep=keep)
        if actual != meta["sha256"]:
            raise ModelPackageError(
                f"{name}: member {member!r} fails its checksum (manifest sha256 {meta['sha256']}, "
                f"content {actual}); the package is corrupted or was modified"
            )
        if keep:
            members[member] = data
    return manifest, members


def write_package(path: str | os.PathLike, manifest: Manifest, members: Mapping[str, bytes]) -> Path:
    """Write a `.dgs` package atomically, and only a valid one.

    ``members`` maps member names to their bytes and must include ``manifest.model_file``. The manifest's
    ``files`` and ``created`` fields are filled in here. The manifest is validated as a reader would, the file
    is written under a temporary name, loaded back with `ModelPackage.load` (checksums, graph), and only then
    renamed over ``path``: an existing package is never replaced by one the SDK would refuse.
    """
    path = Path(path)
    if manifest.model_file not in members:
        raise ModelPackageError(f"{path}: model file {manifest.model_file!r} is not among the members given")
    if MANIFEST_NAME in members:
        raise ModelPackageError(f"{path}: {MANIFEST_NAME} is written from the Manifest, not given as a member")
    manifest.files = {name: {"sha256": sha256_hex(data), "size": len(data)} for name, data in members.items()}
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    Manifest.from_dict(manifest.to_dict(), source=f"{path}: {MANIFEST_NAME}")  # as a reader will check it
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path) as out:
        with zipfile.ZipFile(out.file, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_NAME, text)
            for name, data in members.items():
                zf.writestr(name, data)
        out.file.flush()
        ModelPackage.load(out.tmp, name=os.fspath(path))
    return path
