"""Labelled images from the folder layouts researchers already have: what training and evaluation read.

Layouts found under a data root, recursively (extensions as in `dgs_sdk.scan.IMAGE_EXTENSIONS`, any case):

- ForenSynths / AIGIBench / UniversalFakeDetect / AIGCDetectBench: ``<generator>/[<class>/]{0_real,1_fake}/...``
- GenImage: ``<generator>/{train,val}/{nature,ai}/...`` (folder names may contain spaces)
- flat: ``real/...`` and ``fake/...`` (the generator is then the root folder's name)
- a CSV manifest ``path,label[,generator]`` (paths relative to the CSV's folder, or absolute)

The label is taken from the deepest folder whose name is a label synonym; the generator is the first folder
under the root, unless that folder is itself a label or split folder.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from .errors import DgsError
from .scan import IMAGE_EXTENSIONS

__all__ = [
    "REAL",
    "FAKE",
    "LABEL_SYNONYMS",
    "SPLIT_NAMES",
    "Sample",
    "DataLayoutError",
    "label_of",
    "discover_samples",
    "read_manifest",
    "load_samples",
    "spread",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

REAL, FAKE = 0, 1
LABEL_SYNONYMS: dict[str, int] = {
    "0_real": REAL,
    "real": REAL,
    "nature": REAL,
    "authentic": REAL,
    "1_fake": FAKE,
    "fake": FAKE,
    "ai": FAKE,
    "synthetic": FAKE,
    "generated": FAKE,
}
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})


class DataLayoutError(DgsError, ValueError):
    """A data root or manifest holds no labelled images in a known layout; the message says what was found."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``label`` is 0 for real, 1 for fake."""

    path: str
    label: int
    generator: str
    split: str | None = None


def label_of(name: str) -> int | None:
    """The label a folder name stands for (case-insensitive), or None."""
    return LABEL_SYNONYMS.get(name.strip().lower())


def _describe(root: Path) -> str:
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    except OSError as e:
        return f"cannot list it ({e.strerror or e})"
    if not entries:
        return "it is empty"
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
    return f"it holds {shown}"


def discover_samples(root: str | os.PathLike, split: str | None = None) -> list[Sample]:
    """Every labelled image under ``root``, sorted by path.

    Args:
        root: the data root (or a CSV manifest, see `read_manifest`).
        split: keep only images under a folder of this name (``train``, ``val``...); None keeps all.

    Raises:
        DataLayoutError: ``root`` is missing, or holds no image under a label folder.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        if split is not None:
            raise DataLayoutError(f"{root}: a split ({split!r}) selects folders; a CSV manifest has none")
        return read_manifest(root)
    if not root.is_dir():
        raise DataLayoutError(f"{root}: data root not found (expected a folder or a .csv manifest)")
    samples: list[Sample] = []
    unlabelled = 0
    seen_dirs: set[tuple[int, int]] = set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop
            dirnames.clear()
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames.sort()
        parts = Path(folder).relative_to(root).parts
        labels = [(i, label_of(p)) for i, p in enumerate(parts) if label_of(p) is not None]
        images = sorted(f for f in filenames if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if not images:
            continue
        if not labels:
            unlabelled += len(images)
            continue
        depth, label = labels[-1]
        splits = [p.lower() for p in parts[:depth] if p.lower() in SPLIT_NAMES]
        sample_split = splits[-1] if splits else None
        if split is not None and sample_split != split.lower():
            continue
        first = parts[0]
        generator = root.name if label_of(first) is not None or first.lower() in SPLIT_NAMES else first
        samples.extend(Sample(os.path.join(folder, f), label, generator, sample_split) for f in images)
    if not samples:
        wanted = f" in split {split!r}" if split else ""
        raise DataLayoutError(
            f"{root}: no labelled images found{wanted}; {_describe(root)}"
            + (f" ({unlabelled} images outside any label folder)" if unlabelled else "")
            + ". Expected images under folders named 0_real/1_fake, real/fake or nature/ai, e.g. <generator>/0_real/, "
            "<generator>/train/nature/ or real/ and fake/, or a CSV manifest path,label[,generator]"
        )
    if unlabelled:
        log.warning("%s: %d images outside any label folder were ignored", root, unlabelled)
    return samples


def read_manifest(path: str | os.PathLike) -> list[Sample]:
    """Samples from a CSV with a header ``path,label[,generator]``.

    Labels are 0/1 or any label synonym; relative paths are taken from the CSV's folder. The generator
    defaults to the CSV file's stem. A UTF-8 byte order mark (as Excel writes) is allowed. Listed files that do
    not exist are counted in a log line.

    Raises:
        DataLayoutError: missing columns, an unknown label, no rows, or none of the listed files exists; the
            message names the line.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError) as e:
        raise DataLayoutError(f"{path}: cannot read the manifest ({e})") from None
    if not rows:
        raise DataLayoutError(f"{path}: manifest has no rows (expected a header path,label[,generator])")
    if not {"path", "label"} <= columns:
        raise DataLayoutError(f"{path}: manifest needs columns path and label, found {sorted(columns)}")
    samples = []
    for line, row in enumerate(rows, start=2):
        raw = (row["label"] or "").strip().lower()
        label = {"0": REAL, "1": FAKE}.get(raw, label_of(raw))
        if label is None:
            raise DataLayoutError(f"{path}:{line}: label {row['label']!r} is neither 0/1 nor a known label name")
        file = Path(row["path"])
        file = file if file.is_absolute() else path.parent / file
        samples.append(Sample(str(file), label, (row.get("generator") or "").strip() or path.stem))
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if len(missing) == len(samples):
        raise DataLayoutError(f"{path}: none of the {len(samples)} files it lists exists (e.g. {missing[0]}; "
                              "relative paths are taken from the manifest's folder)")
    if missing:
        log.warning("%s: %d of the %d files it lists do not exist (e.g. %s); they are skipped", path, len(missing),
                    len(samples), missing[0])
    return samples


def load_samples(root: str | os.PathLike, split: str | None = None) -> list[Sample]:
    """`discover_samples`, with one log line counting real and fake images per generator."""
    samples = discover_samples(root, split)
    counts: dict[str, list[int]] = {}
    for s in samples:
        counts.setdefault(s.generator, [0, 0])[s.label] += 1
    summary = ", ".join(f"{g}: {r} real / {f} fake" for g, (r, f) in sorted(counts.items()))
    log.info("%s: %d images (%s)", root, len(samples), summary)
    return samples


def spread(items: Sequence[T], limit: int) -> list[T]:
    """At most ``limit`` of ``items``, spread evenly over them (first and last included), so that every generator
    and label of a sorted list keeps its share."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
