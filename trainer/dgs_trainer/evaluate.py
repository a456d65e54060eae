"""Scoring labelled samples with a torch model (the metrics are `dgs_sdk.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dgs_sdk.data import Sample
from dgs_sdk.detector import sigmoid
from dgs_sdk.perturb import Perturbation
from dgs_sdk.preprocess import PreprocessSpec

from .dataset import ImageDataset, collate_skipping_unreadable
from .errors import TrainError

__all__ = ["predict_samples"]


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
    perturbation: Perturbation | None = None,
    data: str | None = None,
) -> tuple[np.ndarray, int]:
    """Probabilities of "fake" for every sample (NaN where a file could not be read) and the unreadable count.

    Runs in float32 on every device, so that scores, calibrated thresholds and the exported model agree. With
    ``tta`` K > 1 (``patch-select`` only) each image's logit is the mean over K mosaic orders, shuffled with seeds
    0..K-1: the official DGS-Net evaluation shuffles the mosaic of every test image, and this reproduces its
    protocol in expectation. ``perturbation`` degrades each decoded image first (a robustness sweep; ``data``,
    the data root, seeds it).
    """
    if tta > 1 and spec.transform != "patch-select":
        raise TrainError(f"test-time mosaic orders need patch-select preprocessing; this model uses {spec.transform}")
    model.eval()
    logits = np.zeros(len(samples))
    readable = np.zeros(len(samples), dtype=bool)
    skipped = 0
    for order in range(tta):
        loader = DataLoader(
            ImageDataset(samples, spec, train=False, order_seed=order if tta > 1 else None, perturbation=perturbation,
                         data=data),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_skipping_unreadable,
            generator=torch.Generator().manual_seed(0),  # leaves the global random state (training's) untouched
        )
        desc = "evaluating" + (f", {perturbation.description}" if perturbation else "") + (
            f", order {order + 1}/{tta}" if tta > 1 else "")
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
