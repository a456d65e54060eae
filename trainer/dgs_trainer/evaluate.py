"""Scoring labelled samples with a torch model and the metrics researchers report, per generator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dgs_sdk.detector import sigmoid
from dgs_sdk.preprocess import PreprocessSpec

from .data import FAKE, REAL, Sample
from .dataset import ImageDataset, collate_skipping_unreadable
from .errors import TrainError

__all__ = ["predict_samples", "binary_metrics", "metrics_by_generator", "best_balanced_threshold", "format_table"]


@torch.no_grad()
def predict_samples(
    model: nn.Module,
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    workers: int = 2,
    progress: bool = False,
    tta: int = 1,
) -> tuple[np.ndarray, int]:
    """Probabilities of "fake" for every sample (NaN where a file could not be read) and the unreadable count.

    Runs in float32 on every device, so that scores, calibrated thresholds and the exported model agree. With
    ``tta`` K > 1 (``patch-select`` only) each image's logit is the mean over K mosaic orders, shuffled with seeds
    0..K-1: the official DGS-Net evaluation shuffles the mosaic of every test image, and this reproduces its
    protocol in expectation.
    """
    if tta > 1 and spec.transform != "patch-select":
        raise TrainError(f"test-time mosaic orders need patch-select preprocessing; this model uses {spec.transform}")
    model.eval()
    logits = np.zeros(len(samples))
    readable = np.zeros(len(samples), dtype=bool)
    skipped = 0
    for order in range(tta):
        loader = DataLoader(
            ImageDataset(samples, spec, train=False, order_seed=order if tta > 1 else None),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_skipping_unreadable,
            generator=torch.Generator().manual_seed(0),  # leaves the global random state (training's) untouched
        )
        desc = "evaluating" if tta == 1 else f"evaluating, order {order + 1}/{tta}"
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            skipped += batch["skipped"] if order == 0 else 0
            if "image" not in batch:
                continue
            indices = batch["index"].numpy()
            batch_logits = model(batch["image"].to(device)).float()  # float32, as the exported graph computes
            logits[indices] += batch_logits.cpu().numpy().astype(np.float64) / tta
            readable[indices] = True
    probabilities = np.full(len(samples), np.nan)
    probabilities[readable] = sigmoid(logits[readable])
    return probabilities, skipped


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
    """`binary_metrics` for each generator and their mean, over the samples that could be scored."""
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
    """The threshold maximising balanced accuracy ((real acc + fake acc) / 2), and that accuracy."""
    keep = ~np.isnan(probabilities)
    labels, probabilities = labels[keep], probabilities[keep]
    if not ((labels == REAL).any() and (labels == FAKE).any()):
        raise ValueError("a threshold can only be calibrated on data with both real and fake images")
    fpr, tpr, thresholds = roc_curve(labels, probabilities)  # positive (fake) when probability >= threshold
    balanced = 0.5 * (tpr + 1.0 - fpr)
    best = int(np.argmax(balanced))
    return float(min(thresholds[best], 1.0)), float(balanced[best])


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
