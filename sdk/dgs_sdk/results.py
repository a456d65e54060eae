"""The results file of a scan: one row per file, written so that it survives interruption and hostile names.

- **CSV** (RFC 4180: CRLF row ends, any field holding a comma, quote, CR or LF quoted). It is safe to open in a
  spreadsheet: a cell that starts with ``=``, ``+``, ``-``, ``@``, tab or CR (a formula to a spreadsheet) gets a
  ``'`` in front, as OWASP recommends, and so does a cell that starts with ``'``, so that removing one leading
  ``'`` gives every value back exactly. File names that are not valid UTF-8 are written as their original bytes.
- **JSONL**: one JSON object per line, always valid JSON and valid UTF-8. A file name that is not valid UTF-8
  has each undecodable byte 0xXY written as the escape ``\\udcXY`` (Python's ``surrogateescape``;
  ``os.fsencode(row["path"])`` gives the original bytes back).

A scan with provenance evidence (``dgs scan --provenance``) writes `PROVENANCE_COLUMNS`: the columns of
`COLUMNS`, then where the label came from and what `dgs_sdk.provenance` found. A file is resumed only by a scan
that writes the same columns.

Rows are written a batch at a time and each write is either whole or undone: a write that fails (a full disk)
truncates the file back to its last whole row. A new results file, or one replacing an old file
(``overwrite``), is written under a temporary name and takes the old file's place only when its first rows
are written, so a scan that fails before scoring anything leaves the old file as it was. With ``resume`` the
rows of an interrupted scan are read back (a partial last row is dropped) and new rows are appended.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .detector import FAKE, REAL
from .errors import DgsError
from .files import AtomicFile

__all__ = [
    "COLUMNS",
    "PROVENANCE_COLUMNS",
    "LABEL_SOURCES",
    "OUTPUT_FORMATS",
    "ResultsError",
    "PreviousRows",
    "ResultsFile",
    "output_format",
    "neutralise",
    "encode_rows",
    "read_rows",
]

COLUMNS = ("path", "probability", "label", "error")
# label_source: "model" (the detector's label), or "c2pa" where a validly signed C2PA claim of generated content
# set the label against the model's (`dgs scan --provenance-overrides`); empty on error rows.
PROVENANCE_COLUMNS = (*COLUMNS, "label_source", "c2pa", "c2pa_signer", "c2pa_generator", "c2pa_source_type",
                      "metadata", "provenance_detail")
LABEL_SOURCES = ("model", "c2pa")
_WRITTEN_WITH = {COLUMNS: "without --provenance", PROVENANCE_COLUMNS: "with --provenance"}
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
# Cells that start with these are formulas (or become one) to spreadsheet programs; "'" is the escape itself.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


class ResultsError(DgsError):
    """The results file cannot be used: it exists (without --resume or --overwrite), it is not a results file
    of this format, or it cannot be written."""


def output_format(out: str | os.PathLike) -> str:
    """The output format chosen by a file name's extension."""
    ext = Path(out).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"{os.fspath(out)}: output must end in {' or '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[ext]


def neutralise(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: ``'`` in front of a formula start (or of a leading ``'``)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _csv_line(values: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


def encode_rows(rows: Iterable[dict[str, Any]], fmt: str, columns: Sequence[str] = COLUMNS) -> bytes:
    """Rows (``path``, ``probability``, ``label``, ``error`` and any other ``columns``) as the bytes of CSV or
    JSONL lines."""
    if fmt == "csv":
        lines = (_csv_line([neutralise("" if row[c] is None else str(row[c])) for c in columns]) for row in rows)
        return "".join(lines).encode("utf-8", "surrogateescape")
    lines = (json.dumps({c: row[c] for c in columns}, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    return "".join(lines).encode("utf-8", "backslashreplace")  # a lone surrogate becomes the JSON escape \udcXY


def csv_header(columns: Sequence[str] = COLUMNS) -> bytes:
    return _csv_line(columns).encode()


@dataclass
class PreviousRows:
    """The rows an interrupted scan left in its results file, read back for ``--resume``."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    whole: int = 0  # bytes of the file up to the end of its last whole row

    @property
    def paths(self) -> set[str]:
        """The files that have a row, as `path_key` spells them."""
        return {path_key(row["path"]) for row in self.rows}


def path_key(path: str) -> str:
    """One spelling of a path for comparisons: ``photos/a.jpg``, ``./photos/a.jpg`` and its absolute path agree
    (symbolic links are not resolved: two links to one file are two files)."""
    return os.path.normpath(os.path.abspath(path))


def _is_row(row: Any, columns: Sequence[str]) -> bool:
    """Whether ``row`` has the ``columns`` and value types a scan writes."""
    if not isinstance(row, dict) or set(row) != set(columns) or not isinstance(row["path"], str) or not row["path"]:
        return False
    if not all(row[c] is None or isinstance(row[c], str) for c in columns[len(COLUMNS) :]):
        return False
    if row.get("label_source") not in (None, *LABEL_SOURCES):
        return False
    probability, label, error = row["probability"], row["label"], row["error"]
    if error is not None:
        return isinstance(error, str) and probability is None and label is None
    number = isinstance(probability, (int, float)) and not isinstance(probability, bool)
    return number and 0.0 <= probability <= 1.0 and label in (FAKE, REAL)


def _lines(text: str, universal: bool) -> Iterable[tuple[str, int]]:
    """Lines with their end offsets in characters, line ends kept: split at LF only, or also at CR and CRLF
    (``universal``, as the csv module wants its input)."""
    position = 0
    for line in io.StringIO(text, newline="" if universal else "\n"):
        position += len(line)
        yield line, position


def _other_columns(name: str, found: Sequence[str], columns: Sequence[str]) -> ResultsError | None:
    """The error for a results file written with the other known set of columns (with or without provenance)."""
    written = next((how for known, how in _WRITTEN_WITH.items() if set(known) == set(found)), None)
    scanning = _WRITTEN_WITH.get(tuple(columns))
    if written is None or scanning is None or written == scanning:
        return None
    return ResultsError(f"{name}: written {written}, so this scan ({scanning}) cannot resume it: resume {written}, "
                        "or start again with --overwrite")


def read_rows(path: Path, fmt: str, columns: Sequence[str] = COLUMNS) -> PreviousRows:
    """Read a results file back: every whole row, and where the last one ends.

    A last row without its line end (the scan was killed while writing it) is not whole and is dropped.

    Raises:
        ResultsError: the file is not a dgs results file of format ``fmt`` with ``columns`` (the message names
            the line, or says which scan wrote a file of the other known columns).
    """
    name = os.fspath(path)
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise ResultsError(f"{name}: cannot be read to resume ({e.strerror or e})") from None
    previous = PreviousRows()
    position = whole = 0  # characters read so far, and up to the end of the last whole row

    def feed(universal: bool) -> Iterable[str]:
        nonlocal position
        for line, end in _lines(text, universal):
            position = end
            yield line

    def take(row: Any, where: str) -> None:
        nonlocal whole
        if not _is_row(row, columns):
            if isinstance(row, dict) and (error := _other_columns(name, list(row), columns)):
                raise error
            raise ResultsError(f"{name}:{where}: not a dgs results row; cannot resume into this file")
        previous.rows.append(row)
        whole = position

    def ended() -> bool:  # the row read last has its line end: it was written whole
        return text[position - 1] == "\n"

    if fmt == "jsonl":
        for number, line in enumerate(feed(universal=False), start=1):
            if not ended():
                break
            try:
                take(json.loads(line), str(number))
            except ValueError:
                take(None, str(number))
    else:
        reader = csv.reader(feed(universal=True), strict=True)
        try:
            for index, record in enumerate(reader):
                if not ended():
                    break
                if index == 0:
                    if record != list(columns):
                        raise _other_columns(name, record, columns) or ResultsError(
                            f"{name}: not a dgs results file (its header is not {','.join(columns)})")
                    whole = position
                    continue
                cells = [cell[1:] if cell.startswith("'") else cell or None for cell in record]  # undo `neutralise`
                row = dict(zip(columns, cells, strict=True)) if len(cells) == len(columns) else None
                if row is not None and row["probability"] is not None:
                    try:
                        row["probability"] = float(row["probability"])
                    except ValueError:
                        row = None
                take(row, str(reader.line_num))
        except csv.Error:
            pass  # a quoted field cut off by the end of the file: a partial last row, dropped
    previous.whole = len(text[:whole].encode("utf-8", "surrogateescape"))
    return previous


class ResultsFile:
    """Where a scan's rows go: a ``.csv`` or ``.jsonl`` file, or CSV on a stream when ``out`` is None.

    Rows have the ``columns`` (`COLUMNS`, or `PROVENANCE_COLUMNS`). Nothing is written until `write` is first
    called. Then a new file (or one replacing the old file, with
    ``overwrite``) takes its place atomically with its first rows; with ``resume``, a partial last row is cut
    off and rows are appended.

    Raises (at creation):
        ResultsError: ``out`` exists and neither ``resume`` nor ``overwrite`` is given, or it is not a regular
            file, or (with ``resume``) it is not a results file of its format and ``columns``.
        ValueError: ``out`` has an unknown extension, or its folder does not exist.
    """

    def __init__(self, out: str | os.PathLike | None, resume: bool = False, overwrite: bool = False,
                 stream: IO[str] | None = None, columns: Sequence[str] = COLUMNS) -> None:
        self.out = None if out is None else Path(out)
        self.fmt = "csv" if out is None else output_format(out)
        self.columns = tuple(columns)
        self.stream = stream
        self.resume = resume
        self.previous = PreviousRows()
        self._atomic: AtomicFile | None = None
        self._fd: int | None = None
        self._length = 0  # bytes of whole rows in the file
        self.failed = False  # a write failed: the file ends on its last whole row and takes no more
        if self.out is None:
            if resume:
                raise ValueError("--resume needs --out: rows on standard output cannot be read back")
            return
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if not self.out.parent.is_dir():
            raise ValueError(f"{out}: cannot write results, folder {self.out.parent} does not exist")
        if os.path.lexists(self.out):
            st = os.stat(self.out) if os.path.exists(self.out) else None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise ResultsError(f"{out}: exists and is not a regular file; give another --out")
            if not (resume or overwrite):
                raise ResultsError(
                    f"{out}: already exists; --resume continues the scan that wrote it, --overwrite replaces it"
                )
            if resume:
                self.previous = read_rows(self.out, self.fmt, self.columns)
        else:
            self.resume = False  # nothing to resume: a new file

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append whole rows, or none of them.

        Raises:
            ResultsError: the rows could not be written (the file then ends on its last whole row).
        """
        if not rows:
            return
        data = encode_rows(rows, self.fmt, self.columns)
        if self.out is None:
            self._write_stream(data)
            return
        try:
            if self._fd is None:
                self._open(data)
            else:
                self._append(data)
        except OSError as e:
            self.failed = True
            raise ResultsError(f"{self.out}: cannot write results ({e.strerror or e})") from None

    def finish(self) -> None:
        """Called once every row is written: a scan that wrote none still leaves its (empty) results."""
        if self.out is None:
            self._write_stream(b"")
        elif self._fd is None and not self.resume:
            try:
                self._open(b"")
            except OSError as e:
                raise ResultsError(f"{self.out}: cannot write results ({e.strerror or e})") from None

    def _write_stream(self, data: bytes) -> None:
        stream = self.stream or sys.stdout
        try:
            if self._length == 0:
                stream.write(csv_header(self.columns).decode())
                self._length = 1
            stream.write(data.decode("utf-8", "surrogateescape"))
            stream.flush()
        except OSError as e:  # a full disk behind a redirection, a closed pipe
            self.failed = True
            raise ResultsError(f"standard output: cannot write results ({e.strerror or e})") from None

    def _open(self, first_rows: bytes) -> None:
        header = csv_header(self.columns) if self.fmt == "csv" else b""
        if self.resume:
            self._fd = os.open(self.out, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            os.ftruncate(self._fd, self.previous.whole)  # drop a partial last row
            os.lseek(self._fd, 0, os.SEEK_END)
            self._length = self.previous.whole
            self._append(first_rows if self.previous.whole else header + first_rows)
            return
        atomic = AtomicFile(self.out)
        try:
            self._fd = atomic.file.fileno()
            self._length = 0
            self._append(header + first_rows)
            atomic.commit()
        except BaseException:
            self._fd = None
            atomic.close()
            raise
        self._atomic = atomic

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BaseException:
            os.ftruncate(self._fd, self._length)  # back to the last whole row; shrinking needs no space
            raise
        self._length += len(data)

    def close(self) -> None:
        if self._atomic is not None:
            self._atomic.close()
        elif self._fd is not None:
            os.close(self._fd)
        self._atomic = self._fd = None
