"""The metrics researchers report for detectors of generated images, per generator: shared by the evaluation of a
training run (`dgs_trainer.eval_run`) and of a model package (`dgs_sdk.evaluation`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .data import FAKE, REAL, Sample
from .errors import EvaluationError

__all__ = [
    "binary_metrics",
    "metrics_by_generator",
    "best_balanced_threshold",
    "oracle_threshold",
    "require_scores",
    "probabilities_by_path",
    "robustness_entry",
    "format_table",
    "format_robustness",
]


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy at ``threshold``, per-class accuracies, AP and ROC-AUC (None where a class is absent)."""
    predicted = probabilities >= threshold
    real, fake = labels == REAL, labels == FAKE
    both = bool(real.any() and fake.any())
    return {
        "count": int(len(labels)),
        "acc": float((predicted == (labels == FAKE)).mean()) if len(labels) else None,
        "real_acc": float((~predicted[real]).mean()) if real.any() else None,
        "fake_acc": float(predicted[fake].mean()) if fake.any() else None,
        "ap": float(average_precision_score(labels, probabilities)) if both else None,
        "auc": float(roc_auc_score(labels, probabilities)) if both else None,
    }


def metrics_by_generator(samples: Sequence[Sample], probabilities: np.ndarray, threshold: float) -> dict[str, Any]:
    """`binary_metrics` for each generator and their mean, over the samples that could be scored (not NaN)."""
    labels = np.array([s.label for s in samples])
    generators = np.array([s.generator for s in samples])
    scored = ~np.isnan(probabilities)
    result: dict[str, Any] = {}
    for generator in sorted(set(generators.tolist())):
        keep = scored & (generators == generator)
        result[generator] = binary_metrics(labels[keep], probabilities[keep], threshold)
    keys = ("acc", "real_acc", "fake_acc", "ap", "auc")
    mean = {k: _mean([m[k] for m in result.values()]) for k in keys}
    mean["count"] = int(scored.sum())
    result["mean"] = mean
    return result


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def best_balanced_threshold(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """The threshold maximising balanced accuracy ((real acc + fake acc) / 2), and that accuracy.

    Raises:
        ValueError: the scored samples (not NaN) are of one class only.
    """
    keep = ~np.isnan(probabilities)
    labels, probabilities = labels[keep], probabilities[keep]
    if not ((labels == REAL).any() and (labels == FAKE).any()):
        raise ValueError("a threshold can only be calibrated on data with both real and fake images")
    fpr, tpr, thresholds = roc_curve(labels, probabilities)  # positive (fake) when probability >= threshold
    balanced = 0.5 * (tpr + 1.0 - fpr)
    best = int(np.argmax(balanced))
    return float(min(thresholds[best], 1.0)), float(balanced[best])


def oracle_threshold(samples: Sequence[Sample], probabilities: np.ndarray) -> tuple[float | None, float | None]:
    """`best_balanced_threshold` on the samples, or ``(None, None)`` when the data holds one class only."""
    try:
        return best_balanced_threshold(np.array([s.label for s in samples]), probabilities)
    except ValueError:
        return None, None


def require_scores(data: str | os.PathLike, samples: Sequence[Sample], probabilities: np.ndarray) -> None:
    """Refuse data where no image could be scored (NaN everywhere): a table of NaN would hide the fault.

    Raises:
        EvaluationError: naming ``data`` and one of its images.
    """
    if np.isnan(probabilities).all():
        raise EvaluationError(f"{data}: none of its {len(samples)} images could be read (e.g. {samples[0].path}); "
                              "there is nothing to evaluate")


def probabilities_by_path(samples: Sequence[Sample], probabilities: np.ndarray) -> dict[str, float | None]:
    """Each sample's probability of "fake" by path, None where it could not be scored (the report's JSON form)."""
    return {s.path: (None if np.isnan(p) else float(p)) for s, p in zip(samples, probabilities, strict=True)}


def robustness_entry(perturbation: Any, samples: Sequence[Sample], probabilities: np.ndarray, threshold: float,
                     unreadable: int) -> dict[str, Any]:
    """A report's ``robustness`` item: the metrics of the samples re-scored under one `dgs_sdk.perturb.Perturbation`
    (``perturbation``, ``level``, ``description``, ``unreadable``, ``metrics``, ``probabilities``)."""
    return {
        "perturbation": perturbation.kind,
        "level": perturbation.label,
        "description": perturbation.description,
        "unreadable": int(unreadable),
        "metrics": metrics_by_generator(samples, probabilities, threshold),
        "probabilities": probabilities_by_path(samples, probabilities),
    }


def format_table(metrics: dict[str, Any]) -> str:
    """A fixed-width table: one row per generator and the mean, percentages."""

    def cell(v: float | None) -> str:
        return "   -  " if v is None else f"{100 * v:6.2f}"

    width = max(9, *(len(g) for g in metrics))
    lines = [f"{'generator':<{width}}  {'count':>6}  {'acc':>6}  {'real':>6}  {'fake':>6}  {'AP':>6}  {'AUC':>6}"]
    for generator, m in metrics.items():
        cells = "  ".join(cell(m[k]) for k in ("acc", "real_acc", "fake_acc", "ap", "auc"))
        lines.append(f"{generator:<{width}}  {m['count']:>6}  {cells}")
    return "\n".join(lines)


def format_robustness(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """A fixed-width table of the robustness sweep: a row per perturbation level (the clean data first), mean AUC
    and accuracy per detector, in percent."""

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    rows = [("clean", [r["metrics"]["mean"] for r in reports])]
    for i, entry in enumerate(reports[0].get("robustness", [])):
        rows.append((entry["description"], [r["robustness"][i]["metrics"]["mean"] for r in reports]))
    head = ["perturbation"] + [f"{name} {k}" if len(labels) > 1 else k for name in labels for k in ("AUC", "acc")]
    table = [head] + [[name] + [cell(m[k]) for m in means for k in ("auc", "acc")] for name, means in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                   strict=True)))
                     for row in table)
