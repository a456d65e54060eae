"""Provenance evidence in image files, reported beside a detector's verdict: C2PA content credentials and the
metadata generators write.

Generated images often say so themselves. `read_provenance` (or a `ProvenanceReader`, for many files) reports:

- **C2PA content credentials**, read and validated by the official c2pa-python library (``pip install
  "dgs[provenance]"``): the active manifest's signer, claim generator and IPTC digital source type
  (``trainedAlgorithmicMedia`` marks generated media), and how its validation ended:

  ``trusted``: the signature and the manifest's bindings to the file verify, and the signing certificate chains
  to a trust anchor (c2pa-python ships none: they come from ``trust_anchors``); ``valid``: they verify, but the
  signer is on no trust list known here, the common case; ``invalid``: the file was changed after signing, or
  the signature or a binding does not verify (``failures`` holds c2pa-python's status codes); ``none``: no
  manifest; ``error``: c2pa-python could not read the file or its manifest (``message`` says why); ``not
  checked``: c2pa-python is not installed, or the file could not be read.

- **Generator metadata** (`dgs_sdk.generator_metadata`): Stable Diffusion WebUI's ``parameters`` and ComfyUI's
  ``prompt``/``workflow`` PNG text, known generators in EXIF and XMP, XMP's IPTC digital source type.

Files are read as the detector reads them (`dgs_sdk.files.read_regular`: regular files only, a `ConfinedPath`
only where it leads inside its folder, at most `MAX_FILE_BYTES`, against the decode memory budget), and never
fetched from the network: remote manifests and OCSP are not fetched. A file that cannot be read gives notes,
never an exception.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import DgsError, UnreadableImage
from .files import read_regular
from .generator_metadata import (
    GENERATED_SOURCE_TYPES,
    MetadataEvidence,
    clean_text,
    read_metadata,
    source_type_term,
)
from .headers import sniff_format
from .limits import MAX_FILE_BYTES
from .memory import DEFAULT_BUDGET, MemoryBudget

__all__ = [
    "C2PA_NONE",
    "C2PA_TRUSTED",
    "C2PA_VALID",
    "C2PA_INVALID",
    "C2PA_ERROR",
    "C2PA_NOT_CHECKED",
    "INSTALL_HINT",
    "GENERATED_SOURCE_TYPES",
    "MAX_TRUST_ANCHORS_BYTES",
    "ProvenanceError",
    "MetadataEvidence",
    "C2paCredentials",
    "Provenance",
    "ProvenanceReader",
    "c2pa_unavailable",
    "read_provenance",
]

C2PA_NONE, C2PA_TRUSTED, C2PA_VALID, C2PA_INVALID = "none", "trusted", "valid", "invalid"
C2PA_ERROR, C2PA_NOT_CHECKED = "error", "not checked"
INSTALL_HINT = 'pip install "dgs[provenance]"'
# The C2PA trust list is a few hundred kB of PEM.
MAX_TRUST_ANCHORS_BYTES = 16 * 1024**2

# c2pa-python's validation states, as this module names them.
_STATES = {"Trusted": C2PA_TRUSTED, "Valid": C2PA_VALID, "Invalid": C2PA_INVALID}
_MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WebP": "image/webp",
               "TIFF": "image/tiff"}
_ACTIONS_LABELS = ("c2pa.actions", "c2pa.actions.v2")
_UNTRUSTED = "signingCredential.untrusted"
# Reading must not reach the network, whatever the file asks for.
_OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


class ProvenanceError(DgsError):
    """Provenance cannot be read as asked: a trust-anchor file that is missing, too large or refused."""


@dataclass(frozen=True)
class C2paCredentials:
    """What C2PA content credentials say about a file (see the module's description of ``state``).

    Attributes:
        state: ``trusted``, ``valid``, ``invalid``, ``none``, ``error`` or ``not checked``.
        signer: the signing certificate's common name and organisation, as c2pa-python reports them.
        generator: the active manifest's claim generator (name and version).
        source_type: the IPTC digital source type of the active manifest's actions, as its term
            (``trainedAlgorithmicMedia``); a generated one when an action has one.
        failures: c2pa-python's failure codes for the active manifest (``assertion.dataHash.mismatch``...).
        message: why the state is ``error`` or ``not checked``, or what ``valid`` lacks.
    """

    state: str
    signer: str | None = None
    generator: str | None = None
    source_type: str | None = None
    failures: tuple[str, ...] = ()
    message: str | None = None

    @property
    def signature_valid(self) -> bool:
        """The signature and the manifest's bindings to the file verify (trusted or not)."""
        return self.state in (C2PA_TRUSTED, C2PA_VALID)

    @property
    def claims_generated(self) -> bool:
        """A validly signed manifest says the image was generated: the rule by which it may set a label."""
        return self.signature_valid and self.source_type in GENERATED_SOURCE_TYPES

    def describe(self) -> str | None:
        """The state's explanation, in a few words, or None."""
        if self.state == C2PA_INVALID:
            return "C2PA invalid: " + (", ".join(self.failures[:6]) or "no failure code given")
        if not self.message:
            return None
        return f"C2PA: {self.message}" if self.state == C2PA_NONE else f"C2PA {self.state}: {self.message}"


@dataclass(frozen=True)
class Provenance:
    """The provenance evidence of one file: its C2PA credentials, generator metadata, and notes on what could
    not be read."""

    source: str
    c2pa: C2paCredentials
    metadata: tuple[MetadataEvidence, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def generated(self) -> bool:
        """Some evidence says the image was generated: a validly signed C2PA claim, or generator metadata."""
        return self.c2pa.claims_generated or any(evidence.generated for evidence in self.metadata)

    @property
    def detail(self) -> str | None:
        """What the C2PA state means and what could not be read, in one line."""
        parts = [part for part in (self.c2pa.describe(), *self.notes) if part]
        return "; ".join(parts) or None

    def columns(self) -> dict[str, str | None]:
        """The provenance columns of a scan's row (`dgs_sdk.results.PROVENANCE_COLUMNS`, less ``label_source``)."""
        return {
            "c2pa": self.c2pa.state,
            "c2pa_signer": self.c2pa.signer,
            "c2pa_generator": self.c2pa.generator,
            "c2pa_source_type": self.c2pa.source_type,
            "metadata": "; ".join(str(evidence) for evidence in self.metadata) or None,
            "provenance_detail": self.detail,
        }


def _import_c2pa() -> tuple[ModuleType | None, str | None]:
    try:
        import c2pa
    except (ImportError, OSError) as e:  # OSError: its native library cannot be loaded here
        return None, f"c2pa-python cannot be imported ({clean_text(str(e), 200)}); {INSTALL_HINT}"
    return c2pa, None


def c2pa_unavailable() -> str | None:
    """Why C2PA credentials cannot be checked here (naming the extra to install), or None when they can."""
    return _import_c2pa()[1]


def _text(value: Any, limit: int = 100) -> str | None:
    return (clean_text(value, limit) or None) if isinstance(value, str) else None


def _generator(manifest: dict) -> str | None:
    """The claim generator: ``claim_generator_info`` (name and version) of v2 claims, ``claim_generator`` of v1."""
    info = manifest.get("claim_generator_info")
    if isinstance(info, list):
        names = [" ".join(part for part in (_text(item.get("name")), _text(item.get("version"), 30)) if part)
                 for item in info[:3] if isinstance(item, dict)]
        if any(names):
            return clean_text(", ".join(name for name in names if name), 160)
    return _text(manifest.get("claim_generator"), 160)


def _signer(manifest: dict) -> str | None:
    info = manifest.get("signature_info")
    if not isinstance(info, dict):
        return None
    name, organisation = _text(info.get("common_name")), _text(info.get("issuer"))
    if name and organisation and name != organisation:
        return f"{name} ({organisation})"
    return name or organisation


def _source_type(manifest: dict) -> str | None:
    """The digital source type of the manifest's actions: the first that says generated, else the first."""
    found = []
    assertions = manifest.get("assertions")
    for assertion in assertions if isinstance(assertions, list) else []:
        if not isinstance(assertion, dict) or str(assertion.get("label", "")).split("__")[0] not in _ACTIONS_LABELS:
            continue
        data = assertion.get("data")
        actions = data.get("actions") if isinstance(data, dict) else None
        for action in actions if isinstance(actions, list) else []:
            value = action.get("digitalSourceType") if isinstance(action, dict) else None
            if isinstance(value, str) and value.strip():
                found.append(source_type_term(value))
    return next((term for term in found if term in GENERATED_SOURCE_TYPES), found[0] if found else None)


def _credentials(store: dict) -> C2paCredentials:
    """Credentials from c2pa-python's manifest store report (`Reader.json`)."""
    results = store.get("validation_results")
    active = results.get("activeManifest") if isinstance(results, dict) else None
    codes = active.get("failure") if isinstance(active, dict) else None
    failures = [clean_text(entry["code"], 80) for entry in codes if isinstance(entry, dict)
                and isinstance(entry.get("code"), str)] if isinstance(codes, list) else []
    failures.sort(key=lambda code: code == _UNTRUSTED)  # what broke first; an untrusted signer is the usual case
    manifests = store.get("manifests")
    label = store.get("active_manifest")
    manifest = manifests.get(label) if isinstance(manifests, dict) and isinstance(label, str) else None
    manifest = manifest if isinstance(manifest, dict) else {}
    raw_state = store.get("validation_state")
    state = _STATES.get(raw_state)
    message = None
    if state is None:
        state, message = C2PA_ERROR, f"unknown validation state {clean_text(str(raw_state), 40)!r}"
    elif state == C2PA_VALID:
        message = "signer not on a trust list known here"
    return C2paCredentials(state, _signer(manifest), _generator(manifest), _source_type(manifest), tuple(failures),
                           message)


class ProvenanceReader:
    """Reads the provenance evidence of files; one reader serves any number of threads.

    Args:
        trust_anchors: PEM root certificates: a manifest whose signer chains to one of them is ``trusted``.
        budget: the memory budget a file's bytes are held against while it is read (`DEFAULT_BUDGET`, shared
            with the detector's decoding, when None).

    Raises:
        ProvenanceError: ``trust_anchors`` holds no PEM certificate, or c2pa-python refuses it.
    """

    def __init__(self, trust_anchors: str | None = None, budget: MemoryBudget | None = None) -> None:
        self.trust_anchors = trust_anchors
        self.budget = budget or DEFAULT_BUDGET
        self.settings: dict[str, Any] = dict(_OFFLINE)
        if trust_anchors is not None:
            if "-----BEGIN CERTIFICATE-----" not in trust_anchors:
                raise ProvenanceError("C2PA trust anchors: no PEM certificate (-----BEGIN CERTIFICATE-----) found")
            self.settings["trust"] = {"user_anchors": trust_anchors}
            c2pa, _ = _import_c2pa()
            if c2pa is not None:
                try:
                    c2pa.Context.from_dict(self.settings).close()
                except c2pa.C2paError as e:
                    raise ProvenanceError(f"C2PA trust anchors refused by c2pa-python ({clean_text(str(e), 200)})"
                                          ) from None

    @classmethod
    def from_trust_file(cls, path: str | os.PathLike | None) -> ProvenanceReader:
        """A reader whose trust anchors are the PEM certificates of the file at ``path`` (none when None).

        Raises:
            ProvenanceError: the file cannot be read, is over `MAX_TRUST_ANCHORS_BYTES` or is not PEM.
        """
        if path is None:
            return cls()
        data = read_regular(path, MAX_TRUST_ANCHORS_BYTES, ProvenanceError)
        try:
            return cls(data.decode("ascii"))
        except UnicodeDecodeError:
            raise ProvenanceError(f"{os.fspath(path)}: not a PEM file of trust anchors (it is not text)") from None
        except ProvenanceError as e:
            raise ProvenanceError(f"{os.fspath(path)}: {e}") from None

    def read(self, source: str | os.PathLike) -> Provenance:
        """The provenance of the file at ``source`` (a path, or a `ConfinedPath` for a file found in a folder)."""
        name = os.fspath(source)
        try:
            with self.budget.reserve() as reservation:
                data = read_regular(source, MAX_FILE_BYTES, UnreadableImage, reserve=reservation.resize)
                return self.read_bytes(data, name)
        except DgsError as e:
            reason = str(e).removeprefix(f"{name}: ")
            return Provenance(name, C2paCredentials(C2PA_NOT_CHECKED), notes=(f"not read: {reason}",))

    def read_bytes(self, data: bytes, name: str = "<bytes>") -> Provenance:
        """The provenance of an encoded image held in memory; ``name`` names it in the result."""
        fmt = sniff_format(data)
        try:
            credentials = self._c2pa(data, fmt)
        except Exception as e:  # a failure in the C2PA library costs this file its C2PA columns, nothing more
            credentials = C2paCredentials(C2PA_ERROR, message=f"c2pa-python failed ({clean_text(repr(e), 200)})")
        try:
            metadata, notes = read_metadata(data, fmt, name)
        except Exception as e:  # likewise for the metadata parsers
            metadata, notes = [], [f"metadata cannot be read ({clean_text(type(e).__name__)})"]
        return Provenance(name, credentials, tuple(metadata), tuple(notes))

    def _c2pa(self, data: bytes, fmt: str | None) -> C2paCredentials:
        c2pa, missing = _import_c2pa()
        if c2pa is None:
            return C2paCredentials(C2PA_NOT_CHECKED, message=missing)
        try:
            with c2pa.Context.from_dict(self.settings) as context:
                reader = c2pa.Reader.try_create(_MIME_TYPES.get(fmt), io.BytesIO(data), None, context)
                if reader is None:
                    return C2paCredentials(C2PA_NONE)
                with reader:
                    report = reader.json()
        except c2pa.C2paError.NotSupported:
            message = None if fmt else "not a format that carries content credentials"
            return C2paCredentials(C2PA_NONE, message=message)
        except c2pa.C2paError as e:
            return C2paCredentials(C2PA_ERROR, message=f"cannot be read ({clean_text(str(e), 200)})")
        try:
            store = json.loads(report)
        except (ValueError, RecursionError):
            return C2paCredentials(C2PA_ERROR, message="c2pa-python's report cannot be parsed")
        return _credentials(store) if isinstance(store, dict) else C2paCredentials(C2PA_ERROR)


def read_provenance(path: str | os.PathLike, trust_anchors: str | None = None) -> Provenance:
    """The provenance evidence of one image file: C2PA credentials and generator metadata (see the module).

    ``trust_anchors`` is PEM text: signers that chain to one of its certificates are ``trusted``. Never raises
    for what the file holds or whether it can be read; see `Provenance.notes`.

    Example:
        >>> evidence = read_provenance("image.png")
        >>> evidence.c2pa.state, evidence.c2pa.source_type, [str(m) for m in evidence.metadata]
        ('valid', 'trainedAlgorithmicMedia', ["ComfyUI (PNG text 'prompt', 'workflow')"])
    """
    return ProvenanceReader(trust_anchors).read(path)
