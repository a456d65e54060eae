"""A torch dataset over labelled samples, preprocessed by the SDK exactly as deployment will preprocess them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dgs_sdk.data import FAKE, REAL, Sample
from dgs_sdk.errors import DgsError
from dgs_sdk.image import load_image
from dgs_sdk.perturb import Degradation, Perturbation, image_seed
from dgs_sdk.preprocess import PreprocessSpec, crop_image, normalize

__all__ = ["ImageDataset", "ImageUsage", "collate_skipping_unreadable"]


class ImageDataset(Dataset):
    """Decodes and preprocesses samples in DataLoader workers.

    At train time the ``patch-select`` mosaic order is shuffled and the model input is flipped horizontally
    with probability 0.5 (after patch selection, as DGS-Net does), both drawn from a generator seeded by
    ``(seed, epoch, index)``: a run resumed at an epoch sees the same inputs. At evaluation the mosaic keeps its
    deterministic order, unless ``order_seed`` is given: then it is shuffled by a generator seeded by
    ``(order_seed, index)`` (test-time augmentation; never flipped).

    Before preprocessing, a training image is degraded by ``degradation`` (random blur and JPEG, drawn from a
    generator of its own seeded by ``(seed, epoch, index, 1)``), and an evaluation image by ``perturbation``
    (a robustness sweep: the same for every detector, seeded by its path relative to ``data``, the data root; see
    `dgs_sdk.perturb.image_seed`). An unreadable file gives
    an item without
    ``image`` (its ``index``, ``label`` and ``error``), which `collate_skipping_unreadable` drops and counts.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        spec: PreprocessSpec,
        train: bool = False,
        seed: int = 0,
        hflip: bool = True,
        order_seed: int | None = None,
        degradation: Degradation | None = None,
        perturbation: Perturbation | None = None,
        data: str | None = None,
    ) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.train = train
        self.seed = seed
        self.hflip = hflip
        self.order_seed = order_seed
        self.degradation = degradation if degradation is not None and degradation.active else None
        self.perturbation = perturbation
        self.data = data
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
        else:
            rng = None if self.order_seed is None else np.random.default_rng((self.order_seed, index))
        try:
            image = load_image(sample.path)  # [H, W, 3] uint8
            if self.train and self.degradation is not None:
                image = self.degradation.apply(image, np.random.default_rng((self.seed, self.epoch, index, 1)))
            if self.perturbation is not None:
                image = self.perturbation.apply(image, image_seed(sample.path, self.data or "."))
            crop = crop_image(image, self.spec, rng)  # [S, S, 3] uint8
        except DgsError as e:  # unreadable, or too small for the model input
            message = str(e) if sample.path in str(e) else f"{sample.path}: {e}"
            return {"index": index, "label": sample.label, "error": message}
        if self.train and self.hflip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        return {
            "image": torch.from_numpy(normalize(crop[None], self.spec)[0]),  # [3, S, S]
            "label": torch.tensor(float(sample.label)),
            "index": index,
        }


def collate_skipping_unreadable(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items of a batch.

    ``skipped`` counts the unreadable ones and ``errors`` holds their messages; ``used`` and ``skipped_by_label``
    count the readable and unreadable images per label (``[real, fake]``).
    """
    good = [item for item in items if "image" in item]
    bad = [item for item in items if "image" not in item]
    used, skipped_by_label = [0, 0], [0, 0]
    for item in good:
        used[int(item["label"])] += 1
    for item in bad:
        skipped_by_label[int(item["label"])] += 1
    batch: dict[str, Any] = {"skipped": len(bad), "errors": [item["error"] for item in bad], "used": used,
                             "skipped_by_label": skipped_by_label}
    if good:
        batch["image"] = torch.stack([item["image"] for item in good])
        batch["label"] = torch.stack([item["label"] for item in good])
        batch["index"] = torch.tensor([item["index"] for item in good])
    return batch


@dataclass
class ImageUsage:
    """Images used and skipped per label (``[real, fake]``) over the batches of an epoch, and one example error."""

    used: list[int] = field(default_factory=lambda: [0, 0])
    skipped_by_label: list[int] = field(default_factory=lambda: [0, 0])
    example: str | None = None

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_label)

    def add(self, batch: dict[str, Any]) -> None:
        """Count a batch made by `collate_skipping_unreadable`."""
        for label in (REAL, FAKE):
            self.used[label] += batch["used"][label]
            self.skipped_by_label[label] += batch["skipped_by_label"][label]
        if self.example is None and batch["errors"]:
            self.example = batch["errors"][0]
