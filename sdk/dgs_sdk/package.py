"""The `.dgs` model package: one zip holding the model file(s) and a manifest that says how to use them.

Layout::

    model.dgs (zip)
    ├── manifest.json          format version, preprocessing spec, output meaning, threshold, architecture,
    │                          training provenance, the variants, and the sha256 and size of every other member
    ├── model.onnx             variant fp32: the inference graph, image batch [B, 3, S, S] float32 -> logit of
    │                          "fake" [B] float32
    ├── model.fp16.onnx        variant fp16: FP16 inside, float32 in and out (for GPUs)
    ├── model.int8.onnx        variant int8: INT8 Q/DQ graph (for TensorRT)
    └── model.int8-cpu.onnx    variant int8-cpu: ONNX Runtime's dynamic INT8 operators (for ONNX Runtime on CPU)

A package holds at least one variant; each has the same interface, and all but fp32 carry the accuracy figures
measured against fp32 when they were exported. Format 1 packages (one ``model.file``) read as an fp32 variant.
TensorRT engines are not stored: they are built and cached on the target device from an ONNX member.

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

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "PRECISIONS", "VARIANT_FILES", "Manifest", "ModelPackage",
           "Variant", "read_manifest", "write_package"]

FORMAT_NAME = "dgs-model"
FORMAT_VERSION = 2
# The precision variants a package may hold, and the member each is written to.
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx",
                 "int8-cpu": "model.int8-cpu.onnx"}
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


def _free_form(d: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """An object whose content is free, except that every number in it must be finite (JSON has no NaN)."""
    value = _get(d, key, dict, where, {})
    # Each item carries its container (a (parent, label) chain shared by its siblings) and its own label, not its
    # whole path: the path is spelled out only for the error, so deep nesting with long keys costs memory in
    # proportion to the manifest, not to depth times width.
    stack: list[tuple[tuple | None, str, Any]] = [(None, where + key, value)]
    while stack:
        parent, label, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            parts = [label]
            while parent is not None:
                parent, part = parent
                parts.append(part)
            raise ValueError(f"field {''.join(reversed(parts))!r} is {item}, not a finite number")
        if isinstance(item, dict):
            container = (parent, label)
            stack.extend((container, f".{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            container = (parent, label)
            stack.extend((container, f"[{i}]", v) for i, v in enumerate(item))
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
class Variant:
    """One precision of the model: its ONNX member and, for all but fp32, how it scored against fp32 at export
    (``accuracy``: free-form figures such as ``auc``, ``max_abs_dp``, ``agreement``)."""

    precision: str
    file: str
    accuracy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "accuracy": self.accuracy} if self.accuracy else {"file": self.file}


def _fp32_only() -> dict[str, Variant]:
    return {"fp32": Variant("fp32", VARIANT_FILES["fp32"])}


@dataclass
class Manifest:
    """What a model package says about its model.

    Attributes:
        preprocess: the preprocessing every caller must apply (see `dgs_sdk.preprocess`).
        variants: precision -> `Variant`, one ONNX member each (see `PRECISIONS`).
        threshold: probability of "fake" at or above which an image is labelled fake.
        threshold_source: ``"default"`` or ``"calibrated"`` (chosen on a validation set).
        architecture: what the network is (backbone, method, input size...), free-form.
        provenance: how it was trained (method, data, epochs, code revision...), free-form.
        input_name / output_name: tensor names in the ONNX graph.
        files: member name -> {"sha256", "size"}; filled in by `write_package`.
        created: UTC time the package was written (ISO 8601).
    """

    preprocess: PreprocessSpec
    variants: dict[str, Variant] = field(default_factory=_fp32_only)
    threshold: float = 0.5
    threshold_source: str = "default"
    architecture: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    input_name: str = "image"
    output_name: str = "logit"
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""

    @property
    def default_precision(self) -> str:
        """The variant used when none is asked for: fp32 when the package has it, else the first listed."""
        return "fp32" if "fp32" in self.variants else next(iter(self.variants))

    @property
    def model_file(self) -> str:
        """The member of the default variant."""
        return self.variants[self.default_precision].file

    def variant(self, precision: str, source: str = "") -> Variant:
        """The variant ``precision``, or an error naming the package (``source``) and the variants it has."""
        if precision not in self.variants:
            where = f"{source}: " if source else ""
            known = "" if precision in PRECISIONS else f"; precisions are {', '.join(PRECISIONS)}"
            raise ModelPackageError(
                f"{where}has no {precision!r} variant (it has {', '.join(self.variants)}{known}); "
                f"'dgs export RUN --precision {precision}' writes one"
            )
        return self.variants[precision]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": {
                "format": "onnx",
                "input": self.input_name,
                "output": self.output_name,
                "output_meaning": OUTPUT_MEANING,
                "variants": {name: variant.to_dict() for name, variant in self.variants.items()},
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
            return cls._parse(d, version)
        except (TypeError, ValueError) as e:
            raise ModelPackageError(f"{source}: {e}") from None

    @classmethod
    def _parse(cls, d: Mapping[str, Any], version: int) -> Manifest:
        _only_keys(d, MANIFEST_KEYS, "")
        model = _get(d, "model", dict, "")
        own = "file" if version == 1 else "variants"  # format 1 named one member; format 2 lists variants
        _only_keys(model, {own, "format", "input", "output", "output_meaning"}, "field 'model'")
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
        if version == 1:
            variants = {"fp32": Variant("fp32", _get(model, "file", str, "model."))}
        else:
            variants = _parse_variants(_get(model, "variants", dict, "model."))
        for variant in variants.values():
            if variant.file not in files:
                raise ValueError(f"variant {variant.precision!r}: member {variant.file!r} has no checksum in 'files'")
        return cls(
            preprocess=PreprocessSpec.from_dict(_get(d, "preprocess", dict, "")),
            variants=variants,
            threshold=float(threshold),
            threshold_source=_get(d, "threshold_source", str, "", "default"),
            architecture=_free_form(d, "architecture"),
            provenance=_free_form(d, "provenance"),
            input_name=_get(model, "input", str, "model.", "image"),
            output_name=_get(model, "output", str, "model.", "logit"),
            files=files,
            created=_get(d, "created", str, "", ""),
        )


def _parse_variants(raw: Mapping[str, Any]) -> dict[str, Variant]:
    if not raw:
        raise ValueError("field 'model.variants' is empty: a package holds at least one variant")
    variants = {}
    for precision in raw:
        where = f"model.variants.{precision}."
        if precision not in PRECISIONS:
            raise ValueError(f"field 'model.variants' names an unknown precision {precision!r:.40} "
                             f"(known: {', '.join(PRECISIONS)})")
        entry = _get(raw, precision, dict, "model.variants.")
        _only_keys(entry, {"file", "accuracy"}, f"field {where[:-1]!r}")
        variants[precision] = Variant(precision, _get(entry, "file", str, where), _free_form(entry, "accuracy", where))
    files = [v.file for v in variants.values()]
    if len(set(files)) != len(files):
        raise ValueError(f"variants share a member ({files}); each variant has its own")
    return variants


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
    """A loaded and verified `.dgs` package: its manifest, the bytes of the variants read so far and the
    interfaces of their graphs."""

    path: Path
    manifest: Manifest
    members: dict[str, bytes]
    interfaces: dict[str, GraphInterface] = field(default_factory=dict)  # precision -> checked graph

    @property
    def model_bytes(self) -> bytes:
        """The ONNX bytes of the default variant."""
        return self.variant_bytes(self.manifest.default_precision)

    @property
    def model_sha256(self) -> str:
        return self.variant_sha256(self.manifest.default_precision)

    @property
    def fixed_batch(self) -> int | None:
        """The default variant's fixed batch size, or None when its batch axis is dynamic."""
        return self.check_graph().batch

    def variant_sha256(self, precision: str) -> str:
        file = self.manifest.variant(precision, os.fspath(self.path)).file
        listed = self.manifest.files.get(file)  # absent from a package being built, not yet written
        return listed["sha256"] if listed else sha256_hex(self.variant_bytes(precision))

    def variant_bytes(self, precision: str) -> bytes:
        """The ONNX bytes of variant ``precision``, verified against their checksum and checked as a graph."""
        self.check_graph(precision=precision)
        return self.members[self.manifest.variant(precision).file]

    def check_graph(self, name: str | None = None, precision: str | None = None) -> GraphInterface:
        """Check a variant's ONNX member (the default one's unless ``precision`` is given) against the manifest
        (`check_onnx_graph`) once, reading it first if it was not kept; errors name the package as ``name`` (its
        path by default)."""
        precision = precision or self.manifest.default_precision
        if precision not in self.interfaces:
            m, package = self.manifest, name or os.fspath(self.path)
            file = m.variant(precision, package).file
            if file not in self.members:
                self.members[file] = self.read_member(file)
            self.interfaces[precision] = check_onnx_graph(self.members[file], m.input_name, m.output_name,
                                                          m.preprocess.size, f"{package}: {file}")
        return self.interfaces[precision]

    @classmethod
    def load(cls, path: str | os.PathLike, name: str | None = None, precision: str | None = None) -> ModelPackage:
        """Read a package, verify its manifest, the size and sha256 of every member, and a variant's ONNX graph.

        Only the variant ``precision`` (the manifest's default when None) is kept in memory; the other members are
        verified as they stream by, and read and verified again by `variant_bytes` or `read_member`. Errors name
        the package as ``name`` (its path by default).

        Raises:
            ModelPackageError: not a regular file, not a zip, a bad manifest, missing, extra, duplicate or
                oversized members, a checksum mismatch, no such variant, or a graph that does not match its
                manifest.
        """
        path = Path(path)
        name = name or os.fspath(path)
        manifest, members = _open_zip(path, name, lambda zf: _read_members(zf, name, precision))
        package = cls(path=path, manifest=manifest, members=members)
        package.check_graph(name, precision)
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


def read_manifest(path: str | os.PathLike, name: str | None = None) -> Manifest:
    """The validated manifest of the package at ``path``, without reading its other members (which
    `ModelPackage.load` verifies): enough to choose a backend and a variant before loading one."""
    name = name or os.fspath(path)
    return _open_zip(Path(path), name, lambda zf: _read_manifest(zf, name)[0])


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


def _read_manifest(zf: zipfile.ZipFile, name: str) -> tuple[Manifest, dict[str, zipfile.ZipInfo]]:
    """The manifest of an open package and its other members by name, their sizes checked against it."""
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
    return manifest, by_name


def _read_members(zf: zipfile.ZipFile, name: str, precision: str | None) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and the bytes of variant ``precision`` (the default when None) of an open package, every
    member's size and checksum verified."""
    manifest, by_name = _read_manifest(zf, name)
    kept = manifest.variant(precision or manifest.default_precision, name).file
    members = {}
    for member, meta in manifest.files.items():
        keep = member == kept
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

    ``members`` maps member names to their bytes and must include every variant's file. The manifest's
    ``files`` and ``created`` fields are filled in here. The manifest is validated as a reader would, the file
    is written under a temporary name, loaded back with `ModelPackage.load` (checksums, graph), and only then
    renamed over ``path``: an existing package is never replaced by one the SDK would refuse.
    """
    path = Path(path)
    missing = [v.file for v in manifest.variants.values() if v.file not in members]
    if missing:
        raise ModelPackageError(f"{path}: variant members {missing} are not among the members given")
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
        written = ModelPackage.load(out.tmp, name=os.fspath(path))
        for precision in manifest.variants:
            written.check_graph(os.fspath(path), precision)
    return path
