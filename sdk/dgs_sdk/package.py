"""The `.dgs` model package: one zip holding the model file(s) and a manifest that says how to use them.

Layout::

    model.dgs (zip)
    ├── manifest.json   format version, preprocessing spec, output meaning, threshold, architecture,
    │                   training provenance, and the sha256 and size of every other member
    └── model.onnx      the inference graph: image batch [B, 3, S, S] float32 -> logit of "fake" [B]

TensorRT engines are not stored: they are built and cached on the target device from the ONNX member.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ModelPackageError
from .preprocess import PreprocessSpec

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "ModelPackage", "write_package"]

FORMAT_NAME = "dgs-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
OUTPUT_MEANING = "logit of 'fake'"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a JSON object, got {type(value).__name__}")
    return dict(value)


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
    def from_dict(cls, d: Mapping[str, Any], source: str = "manifest") -> Manifest:
        """Parse and validate a manifest; errors name ``source`` and the offending field."""
        if d.get("format") != FORMAT_NAME:
            raise ModelPackageError(f"{source}: not a dgs model manifest (format is {d.get('format')!r})")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise ModelPackageError(f"{source}: format_version missing or not an integer ({version!r})")
        if version > FORMAT_VERSION:
            raise ModelPackageError(
                f"{source}: format version {version} is newer than this SDK reads ({FORMAT_VERSION}); upgrade dgs"
            )
        if version < 1:
            raise ModelPackageError(f"{source}: format version {version} is not valid")
        try:
            model = _mapping(d["model"], "model")
            if model.get("format") != "onnx":
                raise ValueError(f"model format {model.get('format')!r} is not supported (expected onnx)")
            threshold = float(d.get("threshold", 0.5))
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold {threshold} is not a probability in [0, 1]")
            files = _mapping(d["files"], "files")
            for member, meta in files.items():
                if not isinstance(_mapping(meta, f"files[{member!r}]").get("sha256"), str):
                    raise ValueError(f"files[{member!r}] has no sha256")
            return cls(
                preprocess=PreprocessSpec.from_dict(_mapping(d["preprocess"], "preprocess")),
                model_file=str(model.get("file", "model.onnx")),
                threshold=threshold,
                threshold_source=str(d.get("threshold_source", "default")),
                architecture=_mapping(d.get("architecture", {}), "architecture"),
                provenance=_mapping(d.get("provenance", {}), "provenance"),
                input_name=str(model.get("input", "image")),
                output_name=str(model.get("output", "logit")),
                files=files,
                created=str(d.get("created", "")),
            )
        except KeyError as e:
            raise ModelPackageError(f"{source}: required field {e.args[0]!r} is missing") from None
        except (TypeError, ValueError) as e:
            raise ModelPackageError(f"{source}: {e}") from None


@dataclass
class ModelPackage:
    """A loaded and verified `.dgs` package: its manifest and the bytes of its members."""

    path: Path
    manifest: Manifest
    members: dict[str, bytes]

    @property
    def model_bytes(self) -> bytes:
        return self.members[self.manifest.model_file]

    @property
    def model_sha256(self) -> str:
        return self.manifest.files[self.manifest.model_file]["sha256"]

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelPackage:
        """Read a package and verify its format version and the sha256 of every member.

        Raises:
            ModelPackageError: missing file, not a zip, bad manifest, missing member or checksum mismatch.
        """
        path = Path(path)
        name = os.fspath(path)
        if not path.exists():
            raise ModelPackageError(f"{name}: model package not found")
        if path.is_dir():
            raise ModelPackageError(f"{name}: is a directory, expected a .dgs model package file")
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if MANIFEST_NAME not in names:
                    raise ModelPackageError(f"{name}: not a dgs model package (no {MANIFEST_NAME} inside)")
                try:
                    raw = json.loads(zf.read(MANIFEST_NAME))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise ModelPackageError(f"{name}: {MANIFEST_NAME} is not valid JSON ({e})") from None
                if not isinstance(raw, dict):
                    raise ModelPackageError(f"{name}: {MANIFEST_NAME} is not a JSON object")
                manifest = Manifest.from_dict(raw, source=f"{name}: {MANIFEST_NAME}")
                if manifest.model_file not in manifest.files:
                    raise ModelPackageError(f"{name}: manifest has no checksum for model file {manifest.model_file!r}")
                members = {}
                for member, meta in manifest.files.items():
                    if member not in names:
                        raise ModelPackageError(f"{name}: member {member!r} listed in the manifest is missing")
                    data = zf.read(member)
                    actual = sha256_hex(data)
                    if actual != meta.get("sha256"):
                        raise ModelPackageError(
                            f"{name}: member {member!r} fails its checksum (manifest sha256 {meta.get('sha256')}, "
                            f"content {actual}); the package is corrupted or was modified"
                        )
                    members[member] = data
        except zipfile.BadZipFile:
            raise ModelPackageError(f"{name}: not a dgs model package (not a zip file)") from None
        except OSError as e:
            raise ModelPackageError(f"{name}: cannot be read ({e.strerror or e})") from None
        return cls(path=path, manifest=manifest, members=members)


def write_package(path: str | os.PathLike, manifest: Manifest, members: Mapping[str, bytes]) -> Path:
    """Write a `.dgs` package atomically (temporary file, then rename).

    ``members`` maps member names to their bytes and must include ``manifest.model_file``. The manifest's
    ``files`` and ``created`` fields are filled in here.
    """
    path = Path(path)
    if manifest.model_file not in members:
        raise ModelPackageError(f"{path}: model file {manifest.model_file!r} is not among the members given")
    if MANIFEST_NAME in members:
        raise ModelPackageError(f"{path}: {MANIFEST_NAME} is written from the Manifest, not given as a member")
    manifest.files = {name: {"sha256": sha256_hex(data), "size": len(data)} for name, data in members.items()}
    manifest.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2, sort_keys=False))
            for name, data in members.items():
                zf.writestr(name, data)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a model package is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
