"""Scanning files and folders: find images, score them, write one row per file, summarise."""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from .detector import FAKE, Detector, Prediction

__all__ = ["IMAGE_EXTENSIONS", "Target", "ScanConfig", "ScanSummary", "discover", "open_writer", "scan"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
COLUMNS = ("path", "probability", "label", "error")


@dataclass(frozen=True)
class Target:
    """A file to score, or an input argument that produced no file (``error`` says why)."""

    path: str
    error: str | None = None


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(top: str, recursive: bool) -> Iterator[Target]:
    """Image files under ``top``, depth first in sorted order.

    Follows directory symlinks but visits each folder once (by device and inode), so symlink loops end.
    Hidden entries (names starting with a dot, such as macOS ``._photo.jpg`` resource files) are skipped.
    Pipes, devices and sockets with an image name are listed: decoding refuses them, unopened, with an error.
    """
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            yield Target(folder, f"{folder}: folder cannot be read ({e.strerror or e})")
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False  # decoding reports what is wrong with it
            if is_dir:
                subfolders.append(entry.path)
            elif _is_image_name(entry.name):
                yield Target(entry.path)
        if recursive:
            stack.extend(reversed(subfolders))


def discover(paths: Iterable[str], recursive: bool = True) -> list[Target]:
    """Expand files, folders and glob patterns into the list of files to score.

    Files named explicitly are always scored (a non-image then gets an error row); inside folders and among
    the matches of a pattern only files with an image extension (case-insensitive) are taken. A missing path
    or a pattern that matches no image becomes a `Target` with an error, so it is reported, not dropped.
    """
    targets: list[Target] = []
    seen: set[str] = set()

    def add(target: Target) -> None:
        key = os.path.normpath(target.path)
        if key not in seen:
            seen.add(key)
            targets.append(target)

    def expand(path: str, named: bool) -> int:
        found = list(_walk(path, recursive)) if os.path.isdir(path) else []
        if not os.path.isdir(path) and (named or _is_image_name(path)):
            found = [Target(path)]  # decoding reports missing, unreadable and non-image files
        for target in found:
            add(target)
        return len(found)

    for arg in paths:
        if os.path.lexists(arg):
            expand(arg, named=True)
        elif glob.has_magic(arg):
            if not sum(expand(match, named=False) for match in sorted(glob.glob(arg, recursive=True))):
                add(Target(arg, f"{arg}: pattern matched no image files"))
        else:
            add(Target(arg, f"{arg}: no such file or folder"))
    return targets


class _CsvWriter:
    def __init__(self, stream: IO[str]) -> None:
        self._writer = csv.writer(stream, lineterminator="\n")
        self._writer.writerow(COLUMNS)

    def write(self, row: dict) -> None:
        self._writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])


class _JsonlWriter:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, row: dict) -> None:
        self._stream.write(json.dumps(row, ensure_ascii=False) + "\n")


def open_writer(stream: IO[str], fmt: str) -> _CsvWriter | _JsonlWriter:
    """A row writer for ``fmt`` (``"csv"`` or ``"jsonl"``) over an open text stream."""
    return _CsvWriter(stream) if fmt == "csv" else _JsonlWriter(stream)


def output_format(out: str | os.PathLike) -> str:
    """The output format chosen by a file name's extension."""
    ext = Path(out).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"{os.fspath(out)}: output must end in {' or '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[ext]


@dataclass
class ScanConfig:
    """Everything `dgs scan` takes; `scan` runs it."""

    paths: Sequence[str]
    model: str
    out: str | None = None
    threshold: float | None = None
    batch_size: int = 32
    workers: int | None = None
    recursive: bool = True
    backend: str = "auto"
    device: str | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal


@dataclass
class ScanSummary:
    """Counts and speed of a finished scan."""

    real: int = 0
    fake: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def scored(self) -> int:
        return self.real + self.fake

    @property
    def total(self) -> int:
        return self.scored + self.errors

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file was scored, 1 when some could not be."""
        return 1 if self.errors else 0

    def line(self) -> str:
        return (
            f"{self.total} files: {self.real} real, {self.fake} fake, {self.errors} errors "
            f"in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        )


def _predictions(detector: Detector, targets: list[Target]) -> Iterator[Prediction]:
    """Predictions for every target, in order; targets that failed discovery pass through as error rows."""
    scorable = [t.path for t in targets if t.error is None]
    stream = detector.predict_iter(scorable)
    for target in targets:
        yield Prediction(target.path, error=target.error) if target.error else next(stream)


def scan(config: ScanConfig, detector: Detector | None = None, stream: IO[str] | None = None) -> ScanSummary:
    """Score every image the config names and write a row per file.

    Rows go to ``config.out`` (CSV or JSONL by extension) or, when it is ``None``, as CSV to ``stream``
    (standard output by default). The progress bar goes to standard error.

    Raises:
        ValueError: the output name has an unknown extension (checked before the model is loaded).
        DgsError: the model package or backend cannot be used.
        OSError: the output file cannot be written.
    """
    fmt = output_format(config.out) if config.out else "csv"
    if config.out and not Path(config.out).parent.is_dir():
        raise ValueError(f"{config.out}: cannot write results, folder {Path(config.out).parent} does not exist")
    detector = detector or Detector(
        config.model,
        backend=config.backend,
        device=config.device,
        batch_size=config.batch_size,
        threshold=config.threshold,
        workers=config.workers,
    )
    targets = discover(config.paths, recursive=config.recursive)
    summary = ScanSummary()
    start = time.perf_counter()
    # surrogateescape: a file name that is not valid UTF-8 is written back as its original bytes.
    out_file = open(config.out, "w", newline="", encoding="utf-8", errors="surrogateescape") if config.out else None
    try:
        writer = open_writer(out_file or stream or sys.stdout, fmt)
        quiet = None if config.progress is None else not config.progress  # tqdm: None = only on a terminal
        with tqdm(total=len(targets), unit="img", file=sys.stderr, disable=quiet) as bar:
            for prediction in _predictions(detector, targets):
                writer.write(prediction.to_dict())
                if prediction.error:
                    summary.errors += 1
                elif prediction.label == FAKE:
                    summary.fake += 1
                else:
                    summary.real += 1
                bar.update(1)
    finally:
        if out_file:
            out_file.close()
    summary.seconds = time.perf_counter() - start
    return summary
