"""Scanning files and folders: find images, score them, write one row per file, summarise."""

from __future__ import annotations

import glob
import itertools
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from .detector import FAKE, Detector, Prediction
from .results import ResultsFile

__all__ = ["IMAGE_EXTENSIONS", "Target", "ScanConfig", "ScanSummary", "discover", "scan"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True)
class Target:
    """A file to score, or an input argument that produced no file (``error`` says why)."""

    path: str
    error: str | None = None


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _outside_link(path: str, root: str) -> Target | None:
    """An error `Target` for a symbolic link at ``path`` that leads out of ``root`` (a real path), else None."""
    target = os.path.realpath(path)
    if _inside(target, root):
        return None
    return Target(path, f"{path}: symbolic link to {target}, outside the scanned folder {root}; not followed "
                        "(--follow-symlinks follows it)")


def _walk(top: str, recursive: bool, follow_symlinks: bool) -> Iterator[Target]:
    """Image files under ``top``, depth first in sorted order.

    Symbolic links (to files or folders) are followed while they stay inside ``top``; one that leads out of it
    gives an error `Target` unless ``follow_symlinks``. Each folder is visited once (by device and inode), so
    symlink loops end. Hidden entries (names starting with a dot, such as macOS ``._photo.jpg`` resource files)
    are skipped. Pipes, devices and sockets with an image name are listed: reading refuses them, unopened.
    """
    root = os.path.realpath(top)
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
                is_dir = False  # reading reports what is wrong with it
            if not (is_dir or _is_image_name(entry.name)):
                continue
            outside = None if follow_symlinks or not entry.is_symlink() else _outside_link(entry.path, root)
            if outside is not None:
                yield outside
            elif is_dir:
                subfolders.append(entry.path)
            else:
                yield Target(entry.path)
        if recursive:
            stack.extend(reversed(subfolders))


def _glob_root(pattern: str) -> str:
    """The real path of the folder a glob pattern searches under: its leading components without wildcards."""
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), Path(pattern).parts))
    return os.path.realpath(os.path.join(*fixed) if fixed else ".")


def discover(paths: Iterable[str], recursive: bool = True, follow_symlinks: bool = False) -> list[Target]:
    """Expand files, folders and glob patterns into the list of files to score.

    Files named explicitly are always scored (a non-image then gets an error row); inside folders and among
    the matches of a pattern only files with an image extension (case-insensitive) are taken. A missing path
    or a pattern that matches no image becomes a `Target` with an error, so it is reported, not dropped.
    Symbolic links found inside a folder or matched by a pattern are followed only while they stay inside it
    (a pattern's fixed leading folders), unless ``follow_symlinks``.
    """
    targets: list[Target] = []
    seen: set[str] = set()

    def add(target: Target) -> None:
        key = os.path.normpath(target.path)
        if key not in seen:
            seen.add(key)
            targets.append(target)

    def expand(path: str, named: bool, root: str | None = None) -> int:
        is_dir = os.path.isdir(path)
        outside = None
        if root is not None and not follow_symlinks and os.path.islink(path):
            outside = _outside_link(path, root)
        if outside is not None:
            found = [outside] if is_dir or _is_image_name(path) else []
        elif is_dir:
            found = list(_walk(path, recursive, follow_symlinks))
        else:
            found = [Target(path)] if named or _is_image_name(path) else []  # reading reports what is wrong
        for target in found:
            add(target)
        return len(found)

    for arg in paths:
        if os.path.lexists(arg):
            expand(arg, named=True)
        elif glob.has_magic(arg):
            root = _glob_root(arg)
            if not sum(expand(match, named=False, root=root) for match in sorted(glob.glob(arg, recursive=True))):
                add(Target(arg, f"{arg}: pattern matched no image files"))
        else:
            add(Target(arg, f"{arg}: no such file or folder"))
    return targets


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
    follow_symlinks: bool = False
    resume: bool = False
    overwrite: bool = False
    backend: str = "auto"
    device: str | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal


@dataclass
class ScanSummary:
    """Counts and speed of a finished scan; ``resumed`` rows came from the interrupted scan it continued."""

    real: int = 0
    fake: int = 0
    errors: int = 0
    seconds: float = 0.0
    resumed: int = 0

    @property
    def scored(self) -> int:
        return self.real + self.fake

    @property
    def total(self) -> int:
        return self.scored + self.errors

    @property
    def images_per_second(self) -> float:
        return (self.scored - self.resumed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file was scored, 1 when some could not be."""
        return 1 if self.errors else 0

    def count(self, row: dict) -> None:
        if row["error"]:
            self.errors += 1
        elif row["label"] == FAKE:
            self.fake += 1
        else:
            self.real += 1

    def line(self) -> str:
        earlier = f" ({self.resumed} of them from the interrupted scan)" if self.resumed else ""
        return (
            f"{self.total} files{earlier}: {self.real} real, {self.fake} fake, {self.errors} errors "
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

    Rows go to ``config.out`` (CSV or JSONL by extension, see `dgs_sdk.results`) or, when it is ``None``, as
    CSV to ``stream`` (standard output by default), a batch at a time, so an interrupted scan loses at most
    one batch; ``config.resume`` skips the files that already have a row. The output is checked before the
    model is loaded, and an existing file is replaced or appended to only once the first batch is scored.
    The progress bar goes to standard error.

    Raises:
        ValueError: a bad output name or option combination (checked before the model is loaded).
        DgsError: the model package or backend cannot be used, or the results cannot be written
            (`ResultsError`; the file then ends on a whole row).
    """
    results = ResultsFile(config.out, resume=config.resume, overwrite=config.overwrite, stream=stream)
    detector = detector or Detector(
        config.model,
        backend=config.backend,
        device=config.device,
        batch_size=config.batch_size,
        threshold=config.threshold,
        workers=config.workers,
    )
    summary = ScanSummary(resumed=len(results.previous.rows))
    for row in results.previous.rows:
        summary.count(row)
    done = results.previous.paths
    targets = [t for t in discover(config.paths, config.recursive, config.follow_symlinks) if t.path not in done]
    start = time.perf_counter()
    pending: list[dict] = []
    try:
        quiet = None if config.progress is None else not config.progress  # tqdm: None = only on a terminal
        with tqdm(total=len(targets), unit="img", file=sys.stderr, disable=quiet) as bar:
            for prediction in _predictions(detector, targets):
                row = prediction.to_dict()
                summary.count(row)
                pending.append(row)
                if len(pending) >= detector.batch_size:
                    results.write(pending)
                    pending = []
                bar.update(1)
        results.write(pending)
    except (KeyboardInterrupt, SystemExit):
        results.write(pending)  # rows already scored are kept
        raise
    finally:
        results.close()
    summary.seconds = time.perf_counter() - start
    return summary
