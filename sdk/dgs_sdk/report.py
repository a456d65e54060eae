"""`dgs eval --report DIR`: one folder that says what was scored, on which data, and how well.

The folder holds ``metrics.json`` (what ``dgs eval --json`` writes), ``per_generator.csv``, ``robustness.csv``
when perturbations were evaluated, ``report.md`` and its figures under ``figures/`` (drawn by `dgs_sdk.figures`,
which needs the ``report`` extra). This module is the folder's one owner: it decides what may be written where.

Where a report may be written: a folder that does not exist yet (it is created, with its parents), an empty
folder, or the folder of a previous report, recognised by its ``report.md`` (which starts with `HEADING`) and by
holding nothing but the files a report writes. A previous report is rewritten in place and its files that the
new one does not write (figures of a perturbation no longer evaluated...) are removed. Anything else is refused
before a file is written: an existing file (a model package, a CSV), a folder holding other files, a folder
inside a data root or holding scored images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .comparison import compare_reports, describe_detector
from .data import FAKE, Sample
from .errors import EvaluationError
from .figures import DetectorScores, RobustnessSeries, draw_report_figures, figure_text, require_matplotlib
from .files import AtomicFile, file_sha256
from .results import neutralise

__all__ = [
    "HEADING",
    "check_report_dir",
    "METRICS_FILE",
    "TABLE_FILE",
    "ROBUSTNESS_FILE",
    "MARKDOWN_FILE",
    "FIGURES_DIR",
    "TABLE_COLUMNS",
    "ROBUSTNESS_COLUMNS",
    "DataFingerprint",
    "data_fingerprint",
    "order_levels",
    "write_report",
]

HEADING = "# dgs evaluation report"
METRICS_FILE, TABLE_FILE, ROBUSTNESS_FILE, MARKDOWN_FILE = "metrics.json", "per_generator.csv", "robustness.csv", \
    "report.md"
FIGURES_DIR = "figures"
TABLE_COLUMNS = ("detector", "generator", "count", "acc", "real_acc", "fake_acc", "ap", "auc", "threshold")
ROBUSTNESS_COLUMNS = ("detector", "perturbation", "level", "generator", "count", "acc", "auc", "ap")

# Per perturbation kind: whether a larger level is harsher (blur sigma) or milder (JPEG quality, scale factor,
# kept fraction), the figure's title and what a level is. A kind not listed keeps its levels in the given order.
LARGER_IS_HARSHER = {"jpeg": False, "blur": True, "resize": False, "crop": False}
PERTURBATION_TITLES = {"jpeg": "JPEG compression", "blur": "Gaussian blur", "resize": "Resizing", "crop": "Cropping"}
LEVEL_NAMES = {"jpeg": "JPEG quality", "blur": "blur σ (pixels)", "resize": "scale factor",
               "crop": "kept fraction of each side"}

_REPORT_ENTRIES = frozenset({METRICS_FILE, TABLE_FILE, ROBUSTNESS_FILE, MARKDOWN_FILE, FIGURES_DIR})
_LEFT_BY_ATOMIC_WRITE = re.compile(r"\.\d+-[0-9a-f]+\.tmp$")  # `AtomicFile`'s temporary name, its writer killed


@dataclass(frozen=True)
class DataFingerprint:
    """The identity of labelled data, by content.

    Attributes:
        sha256: hex sha256 of the listing described in `data_fingerprint`.
        files: the number of samples listed.
        unreadable: path -> why its bytes could not be read (such a file is in the listing as ``unreadable``).
    """

    sha256: str
    files: int
    unreadable: dict[str, str] = field(default_factory=dict)


def _file_sha256(path: str) -> tuple[str | None, str | None]:
    """The sha256 of a regular file's bytes, or None and why it could not be read."""
    try:
        return file_sha256(path, EvaluationError), None
    except EvaluationError as e:
        return None, str(e)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive than the root's
        return Path(path).as_posix()


def data_fingerprint(samples: Sequence[Sample], root: str | os.PathLike, workers: int = 8) -> DataFingerprint:
    """A checksum of labelled data that changes when an image's bytes or label change, and only then.

    The listing is one line per sample, ``["<path relative to root>", <label>, "<sha256 of its bytes>"]\\n``: a
    JSON array as Python's ``json.dumps`` writes it (``", "`` between items, characters past ASCII escaped), the
    path with ``/``, the label 0 (real) or 1 (fake). The lines are sorted and the fingerprint is the sha256 of
    their ASCII bytes, so it depends neither on the order of the samples nor on where the data root lies. A file
    that cannot be read is listed with ``"unreadable"`` in place of its checksum and reported, never fatal.

    Args:
        samples: the labelled images.
        root: the data root; for a CSV manifest, the manifest (paths are then taken from its folder).
        workers: files hashed at once.
    """
    root = Path(root)
    if root.is_file():
        root = root.parent
    paths = [s.path for s in samples]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        hashed = list(pool.map(_file_sha256, paths))
    lines, unreadable = [], {}
    for sample, (sha, error) in zip(samples, hashed, strict=True):
        if sha is None:
            unreadable[sample.path] = error or "unreadable"
        lines.append(json.dumps([_relative(sample.path, root), int(sample.label), sha or "unreadable"]) + "\n")
    digest = hashlib.sha256("".join(sorted(lines)).encode("ascii")).hexdigest()
    return DataFingerprint(digest, len(samples), unreadable)


def order_levels(kind: str, levels: Sequence[str]) -> list[str]:
    """Distinct ``levels`` of a perturbation ``kind`` from the mildest to the harshest (`LARGER_IS_HARSHER`); for
    an unknown kind, or levels that are not numbers, in the order given."""
    distinct = list(dict.fromkeys(str(level) for level in levels))
    if kind not in LARGER_IS_HARSHER:
        return distinct
    try:
        values = {level: float(level) for level in distinct}
    except ValueError:
        return distinct
    return sorted(distinct, key=lambda level: values[level], reverse=not LARGER_IS_HARSHER[kind])


# ---------------------------------------------------------------------------------------------------------------
# Where the report may go


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_previous_report(out: Path, entries: list[os.DirEntry]) -> bool:
    names = {e.name for e in entries}
    marker = out / MARKDOWN_FILE
    if MARKDOWN_FILE not in names or not marker.is_file() or marker.is_symlink():
        return False
    with open(marker, "rb") as f:
        if f.readline(256).rstrip(b"\r\n") != HEADING.encode():
            return False
    for entry in entries:
        if _LEFT_BY_ATOMIC_WRITE.search(entry.name) and any(entry.name.startswith(n + ".") for n in _REPORT_ENTRIES):
            continue
        if entry.name not in _REPORT_ENTRIES or entry.is_symlink():
            return False
        if (entry.name == FIGURES_DIR) != entry.is_dir(follow_symlinks=False):
            return False
    figures = out / FIGURES_DIR
    if FIGURES_DIR in names:
        for entry in os.scandir(figures):
            regular = entry.is_file(follow_symlinks=False)
            if not (regular and (entry.name.endswith(".png") or (".png." in entry.name
                                                                  and _LEFT_BY_ATOMIC_WRITE.search(entry.name)))):
                return False
    return True


def _owned_files(out: Path) -> set[Path]:
    """The files of a previous report in ``out`` (the folder was checked by `_is_previous_report`)."""
    owned = {out / name for name in _REPORT_ENTRIES - {FIGURES_DIR} if (out / name).is_file()}
    if (out / FIGURES_DIR).is_dir():
        owned |= {Path(e.path) for e in os.scandir(out / FIGURES_DIR) if e.name.endswith(".png")}
    return owned


def _check_out_dir(out: Path, reports: Sequence[dict[str, Any]], samples: Sequence[Sample]) -> set[Path]:
    """Refuse a place the report may not go (module docstring); the files of a previous report there."""
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"{out}: is a file, not a folder; a report is a folder of files: give a new or an empty "
                              "folder (a previous report's folder is rewritten)")
    if os.path.lexists(out) and not out.exists():
        raise EvaluationError(f"{out}: is a broken symbolic link; give a new or an empty folder for the report")
    resolved = out.resolve()
    for report in reports:
        data = Path(report["data"])
        if data.is_dir() and _inside(resolved, data.resolve()):
            raise EvaluationError(f"{out}: lies inside the data root {data}; the report's figures would be read as "
                                  "images by a later evaluation of it. Write the report outside the data")
    images = [s.path for s in samples if _inside(Path(os.path.abspath(s.path)), Path(os.path.abspath(out)))]
    if images:
        raise EvaluationError(f"{out}: holds images that were scored (e.g. {images[0]}); the report is not written "
                              "among the data")
    if not out.is_dir():
        return set()
    entries = list(os.scandir(out))
    if not entries:
        return set()
    if not _is_previous_report(out, entries):
        shown = ", ".join(sorted(e.name + ("/" if e.is_dir() else "") for e in entries)[:5])
        raise EvaluationError(f"{out}: is a folder that holds other files than a dgs report ({shown}"
                              f"{', ...' if len(entries) > 5 else ''}); give a new or an empty folder (a previous "
                              "report's folder is rewritten)")
    return _owned_files(out)


def _check_inputs(reports: Sequence[dict[str, Any]], labels: Sequence[str], samples: Sequence[Sample]) -> None:
    if not reports:
        raise EvaluationError("a report needs at least one evaluation report, got none")
    if len(labels) != len(reports) or len(set(labels)) != len(labels):
        raise EvaluationError(f"a report needs one distinct label per detector, got {list(labels)} for "
                              f"{len(reports)} evaluation reports")
    paths = {s.path for s in samples}
    for label, report in zip(labels, reports, strict=True):
        scored = report["probabilities"].keys()
        if scored != paths:
            missing = sorted(paths - scored)[:1] or sorted(scored - paths)[:1]
            side = "is not among the samples" if scored - paths and not paths - scored else "was not scored by"
            raise EvaluationError(f"{label}: its report and the samples list other images ({missing[0]} {side} "
                                  f"{'it' if side == 'was not scored by' else 'given'}); give the samples the "
                                  "detectors scored")


# ---------------------------------------------------------------------------------------------------------------
# Files


def _write_bytes(path: Path, data: bytes) -> Path:
    with AtomicFile(path) as out:
        out.file.write(data)
    return path


def _text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # paths keep their bytes as on disk


def _fraction(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _csv(rows: list[list[Any]]) -> bytes:
    """CSV lines; text cells (detector and generator names come from file and folder names) that a spreadsheet
    would run as a formula are neutralised as `dgs scan`'s are."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(
        [[neutralise(c) if isinstance(c, str) else c for c in row] for row in rows])
    return _text(buffer.getvalue())


def _table_rows(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[list[Any]]:
    rows: list[list[Any]] = [list(TABLE_COLUMNS)]
    for label, report in zip(labels, reports, strict=True):
        for generator, m in report["metrics"].items():
            rows.append([label, generator, m["count"], *(_fraction(m[k]) for k in TABLE_COLUMNS[3:8]),
                         _fraction(report["threshold"])])
    return rows


@dataclass
class _Robustness:
    """The perturbation levels evaluated, per kind in the order first given, mildest first after ``none``."""

    kinds: dict[str, list[str]]

    @classmethod
    def of(cls, reports: Sequence[dict[str, Any]]) -> _Robustness:
        given: dict[str, list[str]] = {}
        for report in reports:
            for entry in report.get("robustness") or []:
                given.setdefault(entry["perturbation"], []).append(str(entry["level"]))
        return cls({kind: ["none", *order_levels(kind, levels)] for kind, levels in given.items()})

    @staticmethod
    def entry(report: dict[str, Any], kind: str, level: str) -> dict[str, Any] | None:
        """The report's own metrics at level ``none``; else its entry for that kind and level, if evaluated."""
        if level == "none":
            return {"metrics": report["metrics"], "unreadable": report["unreadable"], "description": "clean images"}
        for entry in report.get("robustness") or []:
            if entry["perturbation"] == kind and str(entry["level"]) == level:
                return entry
        return None


def _robustness_rows(reports: Sequence[dict[str, Any]], labels: Sequence[str], robustness: _Robustness) -> list:
    rows: list[list[Any]] = [list(ROBUSTNESS_COLUMNS)]
    for label, report in zip(labels, reports, strict=True):
        for kind, levels in robustness.kinds.items():
            for level in levels:
                entry = robustness.entry(report, kind, level)
                for generator, m in (entry or {"metrics": {}})["metrics"].items():
                    rows.append([label, kind, level, generator, m["count"], _fraction(m["acc"]), _fraction(m["auc"]),
                                 _fraction(m["ap"])])
    return rows


def _safe_name(kind: str, index: int) -> str:
    return kind if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", kind) else f"perturbation{index}"


def check_report_dir(out_dir: str | os.PathLike, data: str | os.PathLike) -> None:
    """What `write_report` checks before writing that does not need the reports: matplotlib is installed and
    ``out_dir`` may hold a report of ``data``. `dgs eval --report` calls it before anything is scored.

    Raises:
        EvaluationError: as `write_report`.
    """
    require_matplotlib()
    _check_out_dir(Path(out_dir), [{"data": os.fspath(data)}], [])


def write_report(out_dir: str | os.PathLike, reports: Sequence[dict[str, Any]], labels: Sequence[str],
                 samples: Sequence[Sample]) -> list[Path]:
    """Write the report folder of one or several detectors evaluated on the same labelled images.

    Args:
        out_dir: the folder (see the module docstring for where a report may go).
        reports: one evaluation report per detector (`dgs_sdk.evaluation.evaluate_package`,
            `dgs_trainer.eval_run.evaluate_run`), the reference first; each may hold ``robustness``, a list of
            ``{perturbation, level, description, metrics, unreadable, probabilities}``.
        labels: a distinct short name per detector (`dgs_sdk.comparison.detector_labels`).
        samples: the labelled images the detectors scored (the keys of each report's ``probabilities``).

    Returns:
        The files written: ``metrics.json``, ``per_generator.csv``, ``robustness.csv`` (with perturbations), the
        figures under ``figures/`` and ``report.md``.

    Raises:
        EvaluationError: matplotlib is missing (the ``report`` extra), ``out_dir`` may not hold a report, labels
            missing or repeated, the samples are not the images scored, or the reports were made on other images.
    """
    _check_inputs(reports, labels, samples)
    comparison = compare_reports(reports, labels) if len(reports) > 1 else None
    require_matplotlib()
    out = Path(out_dir)
    previous = _check_out_dir(out, reports, samples)
    try:
        written = _write_folder(out, reports, labels, samples, comparison, fresh=not previous)
    except OSError as e:
        raise EvaluationError(f"{out}: cannot write the report ({e.strerror or e}: {e.filename or out})") from None
    for stale in previous - set(written):  # a previous report's files that this one has not rewritten
        stale.unlink(missing_ok=True)
    return written


def _write_folder(out: Path, reports: Sequence[dict[str, Any]], labels: Sequence[str], samples: Sequence[Sample],
                  comparison: dict[str, Any] | None, fresh: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / FIGURES_DIR).mkdir(exist_ok=True)
    if fresh:  # the marker first: an interrupted write leaves a folder recognised as a report
        _write_bytes(out / MARKDOWN_FILE, _text(f"{HEADING}\n\n(being written)\n"))
    both = reports[0] if comparison is None else {"detectors": list(reports), "comparison": comparison}
    written = [_write_bytes(out / METRICS_FILE, _text(json.dumps(both, indent=2)))]
    written.append(_write_bytes(out / TABLE_FILE, _csv(_table_rows(reports, labels))))
    robustness = _Robustness.of(reports)
    if robustness.kinds:
        written.append(_write_bytes(out / ROBUSTNESS_FILE, _csv(_robustness_rows(reports, labels, robustness))))
    drawn = draw_report_figures(out / FIGURES_DIR, _scores(reports, labels, samples),
                                _robustness_series(reports, labels, robustness))
    written.extend(figure.path for figure in drawn)
    fingerprint = data_fingerprint(samples, reports[0]["data"])
    links = [(figure.path.relative_to(out).as_posix(), figure.title, figure.caption, figure.topic) for figure in drawn]
    text = _markdown(reports, labels, samples, fingerprint, comparison, robustness.kinds, links,
                     datetime.now(timezone.utc))
    written.append(_write_bytes(out / MARKDOWN_FILE, _text(text)))
    return written


def _scores(reports: Sequence[dict[str, Any]], labels: Sequence[str], samples: Sequence[Sample]) -> list:
    truth = np.array([s.label for s in samples], dtype=int)
    generator = np.array([figure_text(s.generator) for s in samples], dtype=object)
    result = []
    for label, report in zip(labels, reports, strict=True):
        p = report["probabilities"]
        probability = np.array([math.nan if p[s.path] is None else p[s.path] for s in samples], dtype=float)
        result.append(DetectorScores(figure_text(label), truth, probability, generator, float(report["threshold"])))
    return result


def _robustness_series(reports: Sequence[dict[str, Any]], labels: Sequence[str],
                       robustness: _Robustness) -> list[RobustnessSeries]:
    series = []
    for index, (kind, levels) in enumerate(robustness.kinds.items()):
        values = {}
        for label, report in zip(labels, reports, strict=True):
            entries = [robustness.entry(report, kind, level) for level in levels]
            values[figure_text(label)] = {key: [e["metrics"]["mean"][key] if e else None for e in entries]
                                          for key in ("auc", "acc")}
        series.append(RobustnessSeries(kind, _safe_name(kind, index), PERTURBATION_TITLES.get(kind, kind),
                                       LEVEL_NAMES.get(kind, f"{kind} level"), levels, values))
    return series


# ---------------------------------------------------------------------------------------------------------------
# report.md

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # inline specials; no text of ours starts a line


def _md(text: Any) -> str:
    """Text shown as written in Markdown (and in a table cell): its special characters escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def _code(text: Any) -> str:
    """Inline code that holds any text, backticks included."""
    text = str(text).replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"{fence}{text}{fence}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], text: Sequence[int] = (0,)) -> list[str]:
    """A Markdown table: the columns numbered in ``text`` left-aligned, the numbers right-aligned."""
    align = [":--" if i in text else "--:" for i in range(len(header))]
    return [f"| {' | '.join(header)} |", f"| {' | '.join(align)} |", *(f"| {' | '.join(r)} |" for r in rows), ""]


def _detector_lines(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    lines = ["## Detectors", ""]
    for label, report in zip(labels, reports, strict=True):
        if "package" in report:
            p = report["package"]
            what = (f"model package {_code(p['path'])}, {_md(p['precision'])} variant ({_code(p['file'])}, sha256 "
                    f"{_code(p['sha256'])}), run on {_md(report['backend'])}, device {_md(report['device'])}")
        else:
            tta = report.get("tta", 1)
            what = f"training run {_code(report['run'])}, scored with torch" + (
                f" over {tta} mosaic orders" if tta > 1 else "")
            checkpoint = report.get("checkpoint")
            what += (f"; weights {_code(checkpoint['path'])}, sha256 {_code(checkpoint['sha256'])}" if checkpoint
                     else "; the report records no checksum of its weights")
        lines.append(f"- **{_md(label)}**: {what}")
    lines.append("")
    if len(reports) > 1:
        lines += [f"The first, **{_md(labels[0])}**, is the reference the others are compared with.", ""]
    return lines


def _data_lines(report: dict[str, Any], samples: Sequence[Sample], fingerprint: DataFingerprint) -> list[str]:
    split = report["split"]
    lines = ["## Data", "",
             f"- root: {_code(report['data'])}; split: " + (_code(split) if split else "none (every image)"),
             f"- {fingerprint.files} labelled images; fingerprint sha256 {_code(fingerprint.sha256)}: the sha256 of "
             "the sorted lines `[path relative to the root, label, sha256 of the file]`, which changes with any "
             "image's bytes or label and with nothing else (`dgs_sdk.report.data_fingerprint`)"]
    if fingerprint.unreadable:
        shown = sorted(fingerprint.unreadable.items())[:5]
        lines.append(f"- {len(fingerprint.unreadable)} files could not be read for the fingerprint (they are listed "
                     "in it as unreadable): " + "; ".join(_md(message) for _, message in shown)
                     + ("; ..." if len(fingerprint.unreadable) > 5 else ""))
    lines.append("")
    counts: dict[str, list[int]] = {}
    for s in samples:
        counts.setdefault(s.generator, [0, 0])[1 if s.label == FAKE else 0] += 1
    rows = [[_md(g), str(r), str(f), str(r + f)] for g, (r, f) in sorted(counts.items())]
    real, fake = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    rows.append(["**all**", str(real), str(fake), str(real + fake)])
    return lines + _md_table(["generator", "real", "fake", "images"], rows)


def _threshold_lines(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    rows = []
    for label, r in zip(labels, reports, strict=True):
        oracle = r["oracle_threshold"]
        rows.append([_md(label), f"{r['threshold']:.4f}", _md(r["threshold_source"]),
                     "-" if oracle is None else f"{oracle:.4f}", _percent(r["oracle_balanced_accuracy"]),
                     str(r["unreadable"])])
    lines = ["## Thresholds", "", *_md_table(["detector", "threshold", "source", "oracle threshold",
                                              "balanced acc. at oracle (%)", "images not scored"], rows, (0, 2)),
             "An image is called fake when its probability of fake is at least the threshold. Source: `given` on "
             "the command line, `calibrated` (chosen on validation data and stored in the run or package) or "
             "`default` (0.5). The oracle threshold is the one that maximises balanced accuracy on this very data: "
             "it shows what calibration could gain, it is not a fair test figure (- where the data holds one class "
             "only).", ""]
    for label, r in zip(labels, reports, strict=True):
        errors = r.get("errors") or {}
        if r["unreadable"]:
            example = f" (e.g. {_md(next(iter(errors.values())))})" if errors else ""
            lines += [f"- **{_md(label)}** could not score {_count(r['unreadable'], 'image')}{example}; its metrics "
                      "are over the images it scored.", ""]
    return lines


def _metric_lines(reports: Sequence[dict[str, Any]], labels: Sequence[str], comparison: dict[str, Any] | None) -> list:
    lines = ["## Metrics per generator", "",
             "In percent. acc: accuracy at the threshold; real acc: real images called real; fake acc: fakes caught; "
             "AP: average precision (fake is the positive class); AUC: ROC-AUC; - where the generator's images are "
             "of one class only. The row mean averages the generators (its count is every scored image).", ""]
    for label, report in zip(labels, reports, strict=True):
        rows = [[_md(g) if g != "mean" else "**mean**", str(m["count"]),
                 *(_percent(m[k]) for k in ("acc", "real_acc", "fake_acc", "ap", "auc"))]
                for g, m in report["metrics"].items()]
        lines += [f"### {_md(label)}", "", f"{_md(describe_detector(report))}", "",
                  *_md_table(["generator", "count", "acc", "real acc", "fake acc", "AP", "AUC"], rows)]
    if comparison is not None:
        header = ["generator"]
        for i, label in enumerate(labels):
            header += [f"AUC {_md(label)}"] + ([f"ΔAUC {_md(label)}"] if i else [])
        rows = []
        for g in reports[0]["metrics"]:
            row = [_md(g) if g != "mean" else "**mean**"]
            for i, (label, report) in enumerate(zip(labels, reports, strict=True)):
                row.append(_percent(report["metrics"][g]["auc"]))
                if i:
                    row.append(_percent(comparison["delta"][g][label]["auc"], signed=True))
            rows.append(row)
        lines += ["### Side by side", "", *_md_table(header, rows),
                  f"ΔAUC: the detector's AUC minus {_md(labels[0])}'s, in percentage points (positive: better). "
                  "Every difference of every metric is in metrics.json, under comparison.", ""]
    return lines


def _figure_lines(figures: Sequence[tuple[str, str, str, str]], section: str) -> list[str]:
    lines = []
    for link, alt, caption, where in figures:
        if where == section:
            lines += [f"![{_md(alt)}]({link})", "", f"*{_md(caption)}*", ""]
    return lines


def _robustness_lines(reports: Sequence[dict[str, Any]], labels: Sequence[str], kinds: dict[str, list[str]],
                      figures: Sequence[tuple[str, str, str, str]]) -> list[str]:
    lines = ["## Robustness", "",
             "Mean AUC and mean accuracy over the generators, in percent, on the same images perturbed; level none is "
             "the clean evaluation above. Per generator: robustness.csv.", ""]
    for kind, levels in kinds.items():
        header = ["level", "what"] + [f"{name} {_md(label)}" for label in labels for name in ("AUC", "acc")]
        rows, unreadable = [], []
        for level in levels:
            entries = [_Robustness.entry(report, kind, level) for report in reports]
            what = next((e.get("description", "") for e in entries if e), "")
            row = [_md(level), _md(what)]
            for label, e in zip(labels, entries, strict=True):
                mean = e["metrics"]["mean"] if e else {"auc": None, "acc": None}
                row += [_percent(mean["auc"]), _percent(mean["acc"])]
                if e and e.get("unreadable") and level != "none":  # the clean count is in Thresholds
                    unreadable.append(f"{_md(label)} at {_md(level)}: {e['unreadable']}")
            rows.append(row)
        lines += [f"### {_md(PERTURBATION_TITLES.get(kind, kind))} ({_code(kind)})", "",
                  *_md_table(header, rows, (0, 1))]
        if unreadable:
            lines += ["Images not scored: " + "; ".join(unreadable) + ".", ""]
        lines += _figure_lines(figures, f"robustness:{kind}")
    return lines


def _markdown(reports: Sequence[dict[str, Any]], labels: Sequence[str], samples: Sequence[Sample],
              fingerprint: DataFingerprint, comparison: dict[str, Any] | None, kinds: dict[str, list[str]],
              figures: Sequence[tuple[str, str, str, str]], written: datetime) -> str:
    from . import __version__

    lines = [HEADING, "",
             f"Written {written:%Y-%m-%d %H:%M} UTC by dgs {_md(__version__)}: {len(reports)} detector"
             f"{'s' if len(reports) > 1 else ''} on {len(samples)} labelled images.", ""]
    lines += _detector_lines(reports, labels)
    lines += _data_lines(reports[0], samples, fingerprint)
    lines += _threshold_lines(reports, labels)
    lines += _metric_lines(reports, labels, comparison)
    lines += ["## Figures", "", *_figure_lines(figures, "curves"), *_figure_lines(figures, "scores")]
    if kinds:
        lines += _robustness_lines(reports, labels, kinds, figures)
    lines += ["## Files", "",
              f"- {METRICS_FILE}: the evaluation report{'s and their differences' if len(reports) > 1 else ''}, as "
              "`dgs eval --json` writes it, with every image's probability of fake",
              f"- {TABLE_FILE}: one row per detector and generator (and mean): {', '.join(TABLE_COLUMNS)}; "
              "fractions, empty where undefined"]
    if kinds:
        lines.append(f"- {ROBUSTNESS_FILE}: {', '.join(ROBUSTNESS_COLUMNS)}; each perturbation starts with level "
                     "none, the clean images")
    lines.append(f"- {FIGURES_DIR}/: the figures above, PNG")
    return "\n".join(lines) + "\n"
