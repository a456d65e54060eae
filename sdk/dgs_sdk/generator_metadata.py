"""What image generators write into the files they make: PNG text chunks, EXIF and XMP, read from hostile files.

- **PNG text chunks** (tEXt, zTXt, iTXt), wherever they lie, before or after the pixel data: Stable Diffusion
  WebUI's ``parameters``, ComfyUI's ``prompt`` and ``workflow``, InvokeAI's ``invokeai_metadata``, a generator
  named in ``Software`` or ``Source``, XMP in ``XML:com.adobe.xmp``, EXIF in an eXIf chunk. Pillow keeps only the
  chunks before the pixel data unless it decodes every pixel, so the chunks are walked here, header by header.
- **EXIF** (with Pillow): a known generator in Software, Make, Model or Artist; WebUI's parameters in the
  UserComment of a JPEG or WebP.
- **XMP**: the IPTC digital source type (``Iptc4xmpExt:DigitalSourceType``, ``trainedAlgorithmicMedia`` for
  generated content) and a known generator in ``xmp:CreatorTool``.

Every file is taken as hostile. Pillow only sees files whose structure the decoder's header walk accepts
(`dgs_sdk.headers.read_header`: bounded segments, chunks and directories); EXIF is read from at most
`MAX_EXIF_BYTES`, a text chunk is decompressed to at most `MAX_TEXT_BYTES` and a file's text chunks to
`MAX_TEXT_TOTAL` together. What could not be read is said in ``notes``; values found in the file are reported
only as the generator or source type they name, cleaned of control characters and cut short.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import PIL.Image

from .errors import DgsError
from .headers import read_header
from .limits import MAX_PNG_CHUNKS

__all__ = [
    "MAX_TEXT_BYTES",
    "MAX_TEXT_TOTAL",
    "MAX_EXIF_BYTES",
    "GENERATED_SOURCE_TYPES",
    "MetadataEvidence",
    "source_type_term",
    "clean_text",
    "read_metadata",
]

# WebUI's parameters take a few kB and ComfyUI's workflows some hundreds; the start of a text is all the
# evidence needs. Compressed text expands a thousandfold, so decompression stops at these bounds.
MAX_TEXT_BYTES = 1024**2
MAX_TEXT_TOTAL = 4 * 1024**2
# EXIF in a JPEG fits one 64 kB segment; a PNG eXIf or WebP EXIF chunk far larger is not camera metadata.
MAX_EXIF_BYTES = 1024**2
# Notes kept per file (a file with thousands of broken chunks repeats itself).
MAX_NOTES = 8

# IPTC digital source types of media made by a generative model: wholly, or a composite with such media (an
# edit by generative fill). Not "algorithmicMedia": IPTC defines it as made by an algorithm without training data
# (procedural or fractal renders), which is not what a detector of generated images looks for.
GENERATED_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
_SOURCE_TYPE_PREFIXES = ("http://cv.iptc.org/newscodes/digitalsourcetype/",
                         "https://cv.iptc.org/newscodes/digitalsourcetype/", "http://c2pa.org/digitalsourcetype/")

# Generators and generation front ends, as their names appear in Software, CreatorTool and similar fields.
_GENERATORS = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in (
    ("Midjourney", r"midjourney"),
    ("DALL-E", r"\bdall[-\u00b7 ]?e\b"),
    ("OpenAI", r"\bopenai\b"),
    ("Stable Diffusion", r"stable[-_ ]?diffusion"),
    ("Stability AI", r"stability[-_ ]?ai\b"),
    ("NovelAI", r"\bnovel[-_ ]?ai\b"),
    ("ComfyUI", r"\bcomfy[-_ ]?ui\b"),
    ("InvokeAI", r"\binvoke[-_ ]?ai\b"),
    ("Fooocus", r"\bfooocus\b"),
    ("Automatic1111", r"\bautomatic1111\b|\ba1111\b"),
    ("Adobe Firefly", r"\bfirefly\b"),
    ("Google Imagen", r"\bimagen\b"),
    ("Leonardo.Ai", r"\bleonardo[. ]?ai\b"),
    ("Ideogram", r"\bideogram\b"),
    ("FLUX", r"\bflux\.1\b|black[-_ ]?forest[-_ ]?labs"),
    ("Bing Image Creator", r"bing image creator"),
    ("Craiyon", r"\bcraiyon\b"),
    ("NightCafe", r"\bnightcafe\b"),
))
# Stable Diffusion WebUI (AUTOMATIC1111, Forge, SD.Next) ends its parameters with "Steps: 20, Sampler: ...".
_WEBUI_PARAMETERS = re.compile(r"\bSteps: \d+, Sampler: ")
_XMP_SOURCE_TYPE = re.compile(r"DigitalSourceType(?:\s*=\s*|\s+rdf:resource\s*=\s*)[\"']([^\"'<>]{1,400})[\"']"
                              r"|DigitalSourceType>\s*([^<]{1,400}?)\s*<")
_XMP_CREATOR_TOOL = re.compile(r"CreatorTool\s*=\s*[\"']([^\"'<>]{1,400})[\"']|CreatorTool>\s*([^<]{1,400}?)\s*<")

# PNG text keywords worth decompressing; every other text chunk is skipped unread.
_WEBUI_KEYS = ("parameters",)
_COMFYUI_KEYS = ("prompt", "workflow")
_INVOKEAI_KEYS = ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream")
_TOOL_KEYS = ("Software", "Source")
_XMP_KEY = "XML:com.adobe.xmp"
_PNG_TEXT_KEYS = frozenset({*_WEBUI_KEYS, *_COMFYUI_KEYS, *_INVOKEAI_KEYS, *_TOOL_KEYS, _XMP_KEY})
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
# EXIF tags that may name the software that made a file (Software, Make, Model, Artist), and UserComment.
_EXIF_TOOL_TAGS = ((0x0131, "Software"), (0x010F, "Make"), (0x0110, "Model"), (0x013B, "Artist"))
_EXIF_IFD, _USER_COMMENT, _TIFF_XMP = 0x8769, 0x9286, 700
_PILLOW_LOCK = threading.Lock()


@dataclass(frozen=True)
class MetadataEvidence:
    """One finding in a file's metadata: ``finding`` (a generator's name, or an IPTC digital source type) found
    in ``where`` (``"PNG text 'parameters'"``, ``"EXIF Software"``...); ``generated`` when it says the image was
    generated."""

    finding: str
    where: str
    generated: bool = True

    def __str__(self) -> str:
        return f"{self.finding} ({self.where})"


def clean_text(text: str, limit: int = 100) -> str:
    """``text`` as one short printable line: control and other unprintable characters become spaces, runs of
    spaces one, and anything past ``limit`` characters is cut off with an ellipsis."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text[: 4 * limit]).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def source_type_term(value: str) -> str:
    """The IPTC term of a digital source type (``trainedAlgorithmicMedia`` for its full URL), else the value
    itself, cleaned."""
    value = value.strip()
    for prefix in _SOURCE_TYPE_PREFIXES:
        if value.startswith(prefix):
            return clean_text(value[len(prefix) :].strip("/"))
    return clean_text(value)


def _generator_in(value: object) -> str | None:
    """The known generator a metadata value names, if any."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value[:1000]
    return next((name for name, pattern in _GENERATORS if pattern.search(value)), None)


def _user_comment(value: object) -> str:
    """An EXIF UserComment as text: an 8-byte character code (ASCII, UNICODE, JIS or none), then the text."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        return ""
    code, body = value[:8], value[8:MAX_TEXT_BYTES]
    if code.startswith(b"UNICODE"):
        # The byte order is the EXIF block's; WebUI writes big-endian. Text has more zeros in its high bytes.
        order = "utf-16-be" if body[0::2].count(0) >= body[1::2].count(0) else "utf-16-le"
        return body.decode(order, "replace")
    return body.decode("utf-8", "replace")


def _xmp_evidence(xmp: bytes | str, where: str) -> list[MetadataEvidence]:
    """The digital source type and a known generator in the CreatorTool of an XMP packet (the first of each)."""
    text = (xmp if isinstance(xmp, str) else xmp[:MAX_TEXT_BYTES].decode("utf-8", "replace"))[:MAX_TEXT_BYTES]
    found = []
    if (match := _XMP_SOURCE_TYPE.search(text)) and (term := source_type_term(match.group(1) or match.group(2))):
        found.append(MetadataEvidence(term, f"{where} DigitalSourceType", term in GENERATED_SOURCE_TYPES))
    if (match := _XMP_CREATOR_TOOL.search(text)) and (generator := _generator_in(match.group(1) or match.group(2))):
        found.append(MetadataEvidence(generator, f"{where} CreatorTool"))
    return found


def _exif_evidence(tags: dict[int, object], user_comment: object) -> list[MetadataEvidence]:
    found = [MetadataEvidence(generator, f"EXIF {field}") for tag, field in _EXIF_TOOL_TAGS
             if (generator := _generator_in(tags.get(tag)))]
    if _WEBUI_PARAMETERS.search(_user_comment(user_comment)):
        found.append(MetadataEvidence("Stable Diffusion WebUI", "EXIF UserComment"))
    return found


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Silence Pillow while it parses metadata: it warns once per corrupt EXIF field, thousands of times for a
    hostile file. `warnings.catch_warnings` changes process-wide state (until Python 3.14), so the threads that
    read provenance take turns inside it."""
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _exif_from_bytes(exif: bytes, notes: list[str]) -> list[MetadataEvidence]:
    if len(exif) > MAX_EXIF_BYTES:
        notes.append(f"EXIF of {len(exif):,} bytes not read (at most {MAX_EXIF_BYTES:,})")
        return []
    parsed = PIL.Image.Exif()
    parsed.load(exif)
    return _exif_evidence(dict(parsed), parsed.get_ifd(_EXIF_IFD).get(_USER_COMMENT))


def _chunk_name(kind: bytes) -> str:
    return kind.decode("ascii") if kind.isalpha() else "unnamed"


def _inflate(data: memoryview, limit: int) -> tuple[bytes, bool]:
    """Decompress zlib ``data`` to at most ``limit`` bytes; whether that was all of it."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit)
    return out, not inflater.unconsumed_tail


class _PngText:
    """The text chunks of a PNG whose keywords matter here, walked chunk header by chunk header."""

    def __init__(self, data: bytes, notes: list[str]) -> None:
        self.data, self.notes = data, notes
        self.texts: dict[str, str] = {}
        self.exif: bytes | None = None
        self.budget = MAX_TEXT_TOTAL  # bytes of text that may still be decompressed

    def walk(self) -> None:
        data, i, n, chunks = self.data, 8, len(self.data), 0
        while True:
            if i + 12 > n:
                self.notes.append("PNG truncated (it ends without an IEND chunk); text chunks before the cut were read")
                return
            length, kind = int.from_bytes(data[i : i + 4], "big"), data[i + 4 : i + 8]
            end = i + 12 + length
            if end > n:
                self.notes.append(f"PNG truncated (its {_chunk_name(kind)} chunk is cut off); text chunks before the "
                                  "cut were read")
                return
            chunks += 1
            if chunks > MAX_PNG_CHUNKS:
                self.notes.append(f"PNG with more than {MAX_PNG_CHUNKS:,} chunks; the rest was not read")
                return
            if kind == b"IEND":
                return
            if kind in _PNG_TEXT_CHUNKS:
                self._text(kind, i + 8, i + 8 + length)
            elif kind == b"eXIf" and self.exif is None:
                if length > MAX_EXIF_BYTES:
                    self.notes.append(f"EXIF of {length:,} bytes not read (at most {MAX_EXIF_BYTES:,})")
                elif self._checksum_ok(kind, i, length):
                    self.exif = data[i + 8 : i + 8 + length]
            i = end

    def _checksum_ok(self, kind: bytes, at: int, length: int) -> bool:
        data = self.data
        stored = int.from_bytes(data[at + 8 + length : at + 12 + length], "big")
        if zlib.crc32(memoryview(data)[at + 4 : at + 8 + length]) == stored:
            return True
        self.notes.append(f"PNG {_chunk_name(kind)} chunk with a bad checksum; ignored")
        return False

    def _text(self, kind: bytes, start: int, end: int) -> None:
        data = self.data
        sep = data.find(b"\0", start, min(end, start + 80))  # keywords have 1 to 79 bytes
        if sep <= start:
            self.notes.append(f"PNG {_chunk_name(kind)} chunk without a keyword; ignored")
            return
        keyword = data[start:sep].decode("latin-1")
        if keyword not in _PNG_TEXT_KEYS or keyword in self.texts:
            return
        if not self._checksum_ok(kind, start - 8, end - start):
            return
        body, compressed, encoding = sep + 1, kind == b"zTXt", "latin-1"
        if kind == b"iTXt":  # flag, method, language tag, translated keyword, text (UTF-8)
            language_end = data.find(b"\0", body + 2, end)
            translated_end = data.find(b"\0", language_end + 1, end) if language_end >= 0 else -1
            if translated_end < 0:
                self.notes.append(f"PNG iTXt chunk '{clean_text(keyword)}' is malformed; ignored")
                return
            compressed, body, encoding = data[body] == 1, translated_end + 1, "utf-8"
        elif compressed:
            body += 1  # the compression method byte
        if self.budget <= 0:
            self.notes.append(f"PNG text '{clean_text(keyword)}' not read: over {MAX_TEXT_TOTAL:,} bytes of text "
                              "were read already")
            return
        limit = min(MAX_TEXT_BYTES, self.budget)
        if compressed:
            try:
                raw, whole = _inflate(memoryview(data)[body:end], limit)
            except zlib.error:  # counted as read whole, so that corrupt copies of a chunk cannot make work unbounded
                self.budget -= limit
                self.notes.append(f"PNG {_chunk_name(kind)} chunk '{clean_text(keyword)}' cannot be decompressed; "
                                  "ignored")
                return
        else:
            raw, whole = data[body : min(end, body + limit)], end - body <= limit
        if not whole:
            self.notes.append(f"PNG text '{clean_text(keyword)}' longer than {limit:,} bytes; its start was read")
        self.budget -= len(raw)
        self.texts[keyword] = raw.decode(encoding, "replace")

    def evidence(self) -> list[MetadataEvidence]:
        texts, found = self.texts, []

        def where(keys: tuple[str, ...]) -> str:
            present = [key for key in keys if key in texts]
            return "PNG text " + ", ".join(f"'{key}'" for key in present) if present else ""

        if texts.get("parameters", "").strip():
            found.append(MetadataEvidence("Stable Diffusion WebUI", where(_WEBUI_KEYS)))
        comfy = tuple(key for key in _COMFYUI_KEYS if texts.get(key, "").lstrip().startswith("{"))
        if comfy:
            found.append(MetadataEvidence("ComfyUI", where(comfy)))
        if any(texts.get(key, "").strip() for key in _INVOKEAI_KEYS):
            found.append(MetadataEvidence("InvokeAI", where(_INVOKEAI_KEYS)))
        for key in _TOOL_KEYS:
            if generator := _generator_in(texts.get(key)):
                found.append(MetadataEvidence(generator, f"PNG text '{key}'"))
        if _XMP_KEY in texts:
            found.extend(_xmp_evidence(texts[_XMP_KEY], "XMP"))
        if self.exif is not None:
            try:
                with _quiet_pillow():
                    found.extend(_exif_from_bytes(self.exif, self.notes))
            except Exception:  # Pillow raises many kinds on corrupt EXIF
                self.notes.append("EXIF (PNG eXIf chunk) is corrupt; ignored")
        return found


def _pillow_evidence(data: bytes, fmt: str, name: str, notes: list[str]) -> list[MetadataEvidence]:
    """EXIF and XMP of a JPEG, WebP, TIFF or GIF, read by Pillow once the decoder's header walk accepts it."""
    try:
        read_header(data, name)
    except DgsError as e:
        reason = str(e).removeprefix(f"{name}: ")
        notes.append(f"metadata not read: {reason}")
        return []
    found: list[MetadataEvidence] = []
    try:
        with _quiet_pillow(), PIL.Image.open(io.BytesIO(data)) as image:
            if fmt == "TIFF":  # the first directory only: read_header bounded it
                tags = image.tag_v2
                found += _exif_evidence({tag: tags.get(tag) for tag, _ in _EXIF_TOOL_TAGS}, None)
                xmp = tags.get(_TIFF_XMP)
            else:
                exif, xmp = image.info.get("exif"), image.info.get("xmp")
                if isinstance(exif, bytes) and exif:
                    try:
                        found += _exif_from_bytes(exif, notes)
                    except Exception:  # Pillow raises many kinds on corrupt EXIF; XMP may still be read
                        notes.append(f"EXIF ({fmt}) is corrupt; ignored")
            if isinstance(xmp, (bytes, str)) and xmp:
                found += _xmp_evidence(xmp, "XMP")
    except Exception as e:  # Pillow raises many kinds on corrupt files; what was found before stands
        notes.append(f"{fmt} metadata cannot be read ({clean_text(type(e).__name__)})")
    return found


def read_metadata(data: bytes, fmt: str | None, name: str) -> tuple[list[MetadataEvidence], list[str]]:
    """The generator metadata in an encoded image of format ``fmt`` (`dgs_sdk.headers.sniff_format`), and notes
    on what could not be read. Never raises for what the file holds."""
    notes: list[str] = []
    if fmt == "PNG":
        text = _PngText(data, notes)
        text.walk()
        found = text.evidence()
    elif fmt in ("JPEG", "WebP", "TIFF", "GIF"):
        found = _pillow_evidence(data, fmt, name, notes)
    else:
        found = []
    distinct = list(dict.fromkeys(notes))
    if len(distinct) > MAX_NOTES:
        distinct[MAX_NOTES - 1 :] = [f"{len(distinct) - MAX_NOTES + 1} more notes"]
    return found, distinct
