"""Scanning files and folders: find images, score them, write one row per file, summarise."""

from __future__ import annotations

import errno
import glob
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from .detector import FAKE, Detector, Prediction
from .errors import DgsError
from .files import ConfinedPath, inside
from .provenance import C2PA_NOT_CHECKED, Provenance, ProvenanceReader
from .results import COLUMNS, PROVENANCE_COLUMNS, ResultsFile, path_key

__all__ = ["IMAGE_EXTENSIONS", "Target", "ScanConfig", "ScanSummary", "discover", "scan"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True)
class Target:
    """A file to score, or an input argument that produced no file (``error`` says why).

    ``root`` is the real path of the folder the file was found in when links may not lead out of it: reading
    checks where the file actually opened (a link swapped in after the listing is caught then).
    """

    path: str
    error: str | None = None
    root: str | None = None

    @property
    def source(self) -> str | ConfinedPath:
        return self.path if self.root is None else ConfinedPath(self.path, self.root)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _outside(path: str, root: str) -> Target | None:
    """An error `Target` for ``path`` if it resolves out of ``root`` (a real path) through a link, else None."""
    # A chain of links longer than the kernel follows (40) cannot be opened, and resolving thousands of them would
    # exhaust os.path.realpath's recursion: it is reported as the kernel reports it.
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return Target(path, f"{path}: symbolic link that cannot be resolved ({error.strerror}); not followed")
    try:
        target = os.path.realpath(path)
    except RecursionError:  # the chain grew since the check above
        return Target(path, f"{path}: symbolic link that cannot be resolved ({os.strerror(errno.ELOOP)}); "
                            "not followed")
    if inside(target, root):
        return None
    return Target(path, f"{path}: symbolic link to {target}, outside the scanned folder {root}; not followed "
                        "(--follow-symlinks follows it)")


def _walk(top: str, recursive: bool, follow_symlinks: bool, hidden: bool) -> Iterator[Target]:
    """Image files under ``top``, depth first in sorted order.

    Symbolic links (to files or folders) are followed while they stay inside ``top``; one that leads out of it
    gives an error `Target` unless ``follow_symlinks``. Each folder is visited once (by device and inode), so
    symlink loops end. Hidden entries (names starting with a dot, such as macOS ``._photo.jpg`` resource files)
    are skipped unless ``hidden``. Pipes, devices and sockets with an image name are listed: reading refuses
    them, unopened.
    """
    root = os.path.realpath(top)
    confine = None if follow_symlinks else root
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
            if entry.name.startswith(".") and not hidden:
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False  # reading reports what is wrong with it
            if not (is_dir or _is_image_name(entry.name)):
                continue
            outside = _outside(entry.path, root) if confine and entry.is_symlink() else None
            if outside is not None:
                yield outside
            elif is_dir:
                subfolders.append(entry.path)
            else:
                yield Target(entry.path, root=confine)
        if recursive:
            stack.extend(reversed(subfolders))


def _glob(pattern: str, hidden: bool) -> tuple[str, list[str]]:
    """The real path of the folder a pattern searches (its leading components without wildcards) and its
    matches, sorted. ``**`` never descends into linked folders, so links cannot make it loop."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    base = Path(*fixed) if fixed else Path()
    matches = []
    for match in base.glob(str(Path(*parts[len(fixed) :]))):
        relative = match.parts[len(base.parts) :]
        if hidden or not any(part.startswith(".") for part in relative):
            matches.append(str(match))
    return os.path.realpath(base), sorted(matches)


def discover(paths: Iterable[str], recursive: bool = True, follow_symlinks: bool = False,
             hidden: bool = False) -> list[Target]:
    """Expand files, folders and glob patterns into the list of files to score.

    Files named explicitly are always scored (a non-image then gets an error row); inside folders and among
    the matches of a pattern only files with an image extension (case-insensitive) are taken, and names starting
    with a dot only with ``hidden``. A missing path or a pattern that matches no image becomes a `Target` with an
    error, so it is reported, not dropped. Files found inside a folder or matched by a pattern are read only
    while they stay inside it (a pattern's leading folders without wildcards), unless ``follow_symlinks``.
    """
    targets: list[Target] = []
    seen: set[str] = set()

    def add(target: Target) -> None:
        key = path_key(target.path)  # one row per file, however the arguments spell it
        if key not in seen:
            seen.add(key)
            targets.append(target)

    def expand(path: str, named: bool, root: str | None = None) -> int:
        is_dir = os.path.isdir(path)
        outside = _outside(path, root) if root and not follow_symlinks else None
        if outside is not None:
            found = [outside] if is_dir or _is_image_name(path) else []
        elif is_dir:
            found = list(_walk(path, recursive, follow_symlinks, hidden))
        elif named or _is_image_name(path):  # reading reports missing, unreadable and non-image files
            found = [Target(path, root=None if follow_symlinks else root)]
        else:
            found = []
        for target in found:
            add(target)
        return len(found)

    for arg in paths:
        if os.path.lexists(arg):
            expand(arg, named=True)
        elif glob.has_magic(arg):
            root, matches = _glob(arg, hidden)
            if not sum(expand(match, named=False, root=root) for match in matches):
                add(Target(arg, f"{arg}: pattern matched no image files"))
        else:
            add(Target(arg, f"{arg}: no such file or folder"))
    return targets


@dataclass
class ScanConfig:
    """Everything `dgs scan` takes; `scan` runs it.

    ``provenance`` adds the provenance columns (`dgs_sdk.results.PROVENANCE_COLUMNS`: C2PA credentials and
    generator metadata, see `dgs_sdk.provenance`) beside the model's result. ``provenance_overrides`` lets a
    validly signed C2PA claim of generated content label a scored file fake (``label_source`` then says
    ``c2pa``), and ``c2pa_trust_anchors`` names a PEM file of root certificates whose signers are ``trusted``;
    either implies ``provenance``.
    """

    paths: Sequence[str]
    model: str
    out: str | None = None
    threshold: float | None = None
    batch_size: int = 32
    workers: int | None = None
    recursive: bool = True
    follow_symlinks: bool = False
    hidden: bool = False
    resume: bool = False
    overwrite: bool = False
    backend: str = "auto"
    device: str | None = None
    precision: str = "auto"
    progress: bool | None = None  # None: a bar when stderr is a terminal
    provenance: bool = False
    provenance_overrides: bool = False
    c2pa_trust_anchors: str | None = None

    @property
    def reads_provenance(self) -> bool:
        return self.provenance or self.provenance_overrides or self.c2pa_trust_anchors is not None


@dataclass
class ScanSummary:
    """Counts and speed of a finished scan; ``resumed`` rows (``resumed_scored`` of them scored) came from the
    interrupted scan it continued; ``c2pa_labels`` files were labelled fake by C2PA credentials against the
    model (`ScanConfig.provenance_overrides`)."""

    real: int = 0
    fake: int = 0
    errors: int = 0
    seconds: float = 0.0
    resumed: int = 0
    resumed_scored: int = 0
    scored_with: str = ""  # the backend, device and variant, in words
    c2pa_labels: int = 0

    @property
    def scored(self) -> int:
        return self.real + self.fake

    @property
    def total(self) -> int:
        return self.scored + self.errors

    @property
    def images_per_second(self) -> float:
        return (self.scored - self.resumed_scored) / self.seconds if self.seconds > 0 else 0.0

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
        self.c2pa_labels += row.get("label_source") == "c2pa"

    def line(self) -> str:
        earlier = f" ({self.resumed} of them from the interrupted scan)" if self.resumed else ""
        overridden = f" ({self.c2pa_labels} of them by C2PA credentials)" if self.c2pa_labels else ""
        return (
            f"{self.total} files{earlier}: {self.real} real, {self.fake} fake{overridden}, {self.errors} errors "
            f"in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
            + (f" with {self.scored_with}" if self.scored_with else "")
        )


def _predictions(detector: Detector, targets: list[Target]) -> Iterator[Prediction]:
    """Predictions for every target, in order; targets that failed discovery pass through as error rows."""
    scorable = [t.source for t in targets if t.error is None]
    stream = detector.predict_iter(scorable)
    for target in targets:
        yield Prediction(target.path, error=target.error) if target.error else next(stream)


def _provenance(reader: ProvenanceReader, targets: list[Target], workers: int) -> Iterator[Provenance | None]:
    """The provenance of every target, in order, read by ``workers`` threads a bounded way ahead of the caller;
    None for targets that failed discovery. Close the iterator to stop the threads."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dgs-provenance")
    queue = iter(targets)
    ahead: deque[Future | None] = deque()

    def submit(count: int) -> None:
        for target in itertools.islice(queue, count):
            ahead.append(None if target.error else pool.submit(reader.read, target.source))

    try:
        submit(2 * workers)
        while ahead:
            future = ahead.popleft()
            submit(1)
            yield None if future is None else future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _add_provenance(row: dict[str, Any], evidence: Provenance | None, overrides: bool) -> None:
    """Fill a row's provenance columns; with ``overrides``, a scored file whose valid C2PA credentials say it was
    generated is labelled fake, and ``label_source`` says so where that changed the model's label."""
    row.update(dict.fromkeys(PROVENANCE_COLUMNS[len(COLUMNS) :]))
    if evidence is None:  # a path that failed discovery (missing, a link out of the folder): never opened
        row.update(c2pa=C2PA_NOT_CHECKED, provenance_detail="not read")
    else:
        row.update(evidence.columns())
    if row["error"] is None:
        row["label_source"] = "model"
        if overrides and evidence is not None and evidence.c2pa.claims_generated and row["label"] != FAKE:
            row["label"], row["label_source"] = FAKE, "c2pa"


def scan(config: ScanConfig, detector: Detector | None = None, stream: IO[str] | None = None) -> ScanSummary:
    """Score every image the config names and write a row per file.

    Rows go to ``config.out`` (CSV or JSONL by extension, see `dgs_sdk.results`) or, when it is ``None``, as
    CSV to ``stream`` (standard output by default), a batch at a time, so an interrupted scan loses at most
    one batch; ``config.resume`` skips the files that already have a row. The output is checked before the
    model is loaded, and an existing file is replaced or appended to only once the first batch is scored.
    With provenance (`ScanConfig.reads_provenance`), each file's evidence is read by threads of its own beside
    the model's and written in the same row. The progress bar goes to standard error.

    Raises:
        ValueError: a bad output name or option combination (checked before the model is loaded).
        DgsError: the model package or backend cannot be used, the C2PA trust anchors cannot be used
            (`ProvenanceError`), or the results cannot be written (`ResultsError`; the file then ends on a whole
            row).
    """
    provenance = config.reads_provenance
    columns = PROVENANCE_COLUMNS if provenance else COLUMNS
    results = ResultsFile(config.out, resume=config.resume, overwrite=config.overwrite, stream=stream,
                          columns=columns)
    reader = ProvenanceReader.from_trust_file(config.c2pa_trust_anchors) if provenance else None
    detector = detector or Detector(
        config.model,
        backend=config.backend,
        device=config.device,
        precision=config.precision,
        batch_size=config.batch_size,
        threshold=config.threshold,
        workers=config.workers,
    )
    summary = ScanSummary(scored_with=detector.backend.describe())
    for row in results.previous.rows:
        summary.count(row)
    summary.resumed, summary.resumed_scored = summary.total, summary.scored
    done = results.previous.paths
    found = discover(config.paths, config.recursive, config.follow_symlinks, config.hidden)
    targets = [t for t in found if path_key(t.path) not in done]
    start = time.perf_counter()
    pending: list[dict] = []
    evidence = _provenance(reader, targets, detector.workers) if reader else itertools.repeat(None, len(targets))
    try:
        quiet = None if config.progress is None else not config.progress  # tqdm: None = only on a terminal
        with tqdm(total=len(targets), unit="img", file=sys.stderr, disable=quiet) as bar:
            for prediction, file_evidence in zip(_predictions(detector, targets), evidence, strict=True):
                row = prediction.to_dict()
                if provenance:
                    _add_provenance(row, file_evidence, config.provenance_overrides)
                summary.count(row)
                pending.append(row)
                if len(pending) >= detector.batch_size:
                    results.write(pending)
                    pending = []
                bar.update(1)
        results.write(pending)
        results.finish()
    except BaseException:  # interrupted, or the model failed on a later batch: rows already scored are kept
        if pending and not results.failed:
            try:
                results.write(pending)
            except DgsError:
                pass  # the error being raised says more
        raise
    finally:
        if reader:
            evidence.close()
        results.close()
    summary.seconds = time.perf_counter() - start
    return summary
