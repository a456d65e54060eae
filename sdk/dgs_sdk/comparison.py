"""Several detectors scored on the same labelled data, side by side: a large detector and the small one distilled
from it, a run and its exported package, two precision variants.

Works on the reports of `dgs_trainer.eval_run.evaluate_run` and `dgs_sdk.evaluation.evaluate_package` (made on the
same data, split and files); the first report is the reference the others are compared with. Needs no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import EvaluationError

__all__ = ["METRICS", "TABLE_WIDTH", "detector_labels", "describe_detector", "describe_threshold",
           "compare_reports", "format_comparison"]

METRICS = ("acc", "real_acc", "fake_acc", "ap", "auc")
TABLE_WIDTH = 120  # the side-by-side table drops its AP columns rather than grow past this


def detector_labels(targets: Sequence[str | os.PathLike]) -> list[str]:
    """Short names for the detectors: each one's folder or file name, with as many parent folders as it takes
    to tell equal names apart (``a/model.dgs``, ``b/model.dgs``)."""
    parts = [Path(os.path.abspath(t)).parts for t in targets]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) if len(p) > 1 else p[0] for p, d in zip(parts, depth, strict=True)]
        clashes = {i for i, label in enumerate(labels) if labels.count(label) > 1}
        if not clashes or all(depth[i] >= len(parts[i]) - 1 for i in clashes):
            return labels
        for i in clashes:
            depth[i] = min(depth[i] + 1, len(parts[i]) - 1)


def describe_detector(report: dict[str, Any]) -> str:
    """What was scored: for a package its path, variant, file, sha256, backend and device; for a run its path."""
    if "package" in report:
        p = report["package"]
        return (f"{p['path']}: {p['precision']} variant ({p['file']}, sha256 {p['sha256'][:12]}) on "
                f"{report['backend']}, {report['device']}")
    tta = report.get("tta", 1)
    return f"{report['run']}: training run, scored with torch" + (f" over {tta} mosaic orders" if tta > 1 else "")


def describe_threshold(report: dict[str, Any]) -> str:
    """The threshold used, where it came from, and the best one on the data (the oracle threshold)."""
    oracle = report["oracle_threshold"]
    return f"threshold {report['threshold']:.4f} ({report['threshold_source']}); " + (
        f"oracle threshold on this data {oracle:.4f} (balanced accuracy {report['oracle_balanced_accuracy']:.4f})"
        if oracle is not None else "no oracle threshold (the data holds one class only)")


def _check_comparable(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    if len(reports) < 2:
        raise EvaluationError(f"a comparison needs two reports or more, got {len(reports)}")
    if len(labels) != len(reports) or len(set(labels)) != len(labels):
        raise EvaluationError(f"a comparison needs one distinct label per report, got {list(labels)} for "
                              f"{len(reports)} reports")
    reference = reports[0]
    for label, report in zip(labels[1:], reports[1:], strict=True):
        if report["probabilities"].keys() != reference["probabilities"].keys():
            raise EvaluationError(f"{label} was scored on other images than {labels[0]} ({report['data']}, split "
                                  f"{report['split']} vs {reference['data']}, split {reference['split']}); "
                                  "detectors are compared on the same images only")


def _difference(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def compare_reports(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """How each detector differs from the first (the reference), per generator and on average.

    Args:
        reports: evaluation reports made on the same images, the reference first.
        labels: a distinct short name per report (`detector_labels`).

    Returns:
        ``labels``, ``reference`` (the first label) and ``delta``: for each generator and ``mean``, for each
        other detector, each metric of `METRICS` minus the reference's (fractions, as in the reports; None where
        either is None).

    Raises:
        EvaluationError: fewer than two reports, labels missing or repeated, or reports made on other images.
    """
    _check_comparable(reports, labels)
    reference = reports[0]["metrics"]
    delta = {
        generator: {label: {k: _difference(report["metrics"][generator][k], reference[generator][k]) for k in METRICS}
                    for label, report in zip(labels[1:], reports[1:], strict=True)}
        for generator in reference
    }
    return {"labels": list(labels), "reference": labels[0], "delta": delta}


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    if signed and round(100 * value, 2) != 0:  # no sign on a difference that rounds to nothing ("-0.00")
        return f"{100 * value:+.2f}"
    return f"{abs(100 * value) if signed else 100 * value:.2f}"


def format_comparison(reports: Sequence[dict[str, Any]], labels: Sequence[str], width: int = TABLE_WIDTH) -> str:
    """The lines `dgs eval --compare` prints: each detector's label, what it is and its threshold, then one table
    with a row per generator and the mean: each detector's AUC, accuracy and AP (AP left out where the table would
    be wider than ``width``), and beside each other detector's AUC its ΔAUC, that AUC minus the reference's, in
    percentage points.

    Raises:
        EvaluationError: as `compare_reports`.
    """
    comparison = compare_reports(reports, labels)
    label_width = max(len(label) for label in labels)
    lines = []
    for label, report in zip(labels, reports, strict=True):
        lines.append(f"{label:<{label_width}}  {describe_detector(report)}")
        lines.append(f"{'':<{label_width}}  {describe_threshold(report)}")
    lines.append("")
    lines.extend(_table(reports, labels, comparison, width))
    lines.append(f"figures in percent; ΔAUC: a detector's AUC minus {labels[0]}'s, in percentage points")
    return "\n".join(lines)


def _table(reports: Sequence[dict[str, Any]], labels: Sequence[str], comparison: dict[str, Any],
           width: int) -> list[str]:
    generators = list(reports[0]["metrics"])

    def count(generator: str) -> str:
        counts = sorted({r["metrics"][generator]["count"] for r in reports})  # differ where an image failed for one
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"

    # (title over the group, [(column header, cell per generator)]): a group per detector, ΔAUC beside the AUC
    def groups(keys: tuple[str, ...]) -> list[tuple[str, list[tuple[str, list[str]]]]]:
        names = {"auc": "AUC", "acc": "acc", "ap": "AP"}
        result = []
        for i, (label, report) in enumerate(zip(labels, reports, strict=True)):
            columns = [(names[k], [_percent(report["metrics"][g][k]) for g in generators]) for k in keys]
            if i:
                columns.insert(1, ("ΔAUC", [_percent(comparison["delta"][g][label]["auc"], signed=True)
                                            for g in generators]))
            result.append((label, columns))
        return result

    first = [("", [("generator", generators), ("count", [count(g) for g in generators])])]
    lines = _render(first + groups(("auc", "acc", "ap")))
    if max(len(line) for line in lines) > width:
        lines = _render(first + groups(("auc", "acc")))
    return lines


def _render(groups: list[tuple[str, list[tuple[str, list[str]]]]]) -> list[str]:
    """Fixed-width lines: a header row naming each group over its columns, a row of column headers, then the
    cells; text columns left-aligned, numbers right-aligned, at least 6 wide, two spaces apart, groups three."""
    top, heads, rows = [], [], None
    for title, columns in groups:
        widths = [max(6, len(head), *(len(c) for c in cells)) for head, cells in columns]
        span = sum(widths) + 2 * (len(widths) - 1)
        for i in range(len(title) + 2 - span):  # a long label widens its group's columns in turn
            widths[i % len(widths)] += 1
        span = max(span, len(title) + 2)
        top.append(f"{' ' + title + ' ':-^{span}}" if title else " " * span)
        heads.append("  ".join(f"{h:<{w}}" if h == "generator" else f"{h:>{w}}"
                               for (h, _), w in zip(columns, widths, strict=True)))
        cells = ["  ".join(f"{c[i]:<{w}}" if h == "generator" else f"{c[i]:>{w}}"
                           for (h, c), w in zip(columns, widths, strict=True)) for i in range(len(columns[0][1]))]
        rows = cells if rows is None else [f"{a}   {b}" for a, b in zip(rows, cells, strict=True)]
    return [line.rstrip() for line in ("   ".join(top), "   ".join(heads), *(rows or []))]
