"""A torch dataset over labelled samples, preprocessed by the SDK exactly as deployment will preprocess them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dgs_sdk.errors import DgsError
from dgs_sdk.image import load_image
from dgs_sdk.preprocess import PreprocessSpec, crop_image, normalize

from .data import Sample

__all__ = ["ImageDataset", "collate_skipping_unreadable"]


class ImageDataset(Dataset):
    """Decodes and preprocesses samples in DataLoader workers.

    At train time the ``patch-select`` mosaic order is shuffled and the model input is flipped horizontally
    with probability 0.5 (after patch selection, as DGS-Net does), both drawn from a generator seeded by
    ``(seed, epoch, index)``: a run resumed at an epoch sees the same inputs. An unreadable file gives ``None``,
    which `collate_skipping_unreadable` drops and counts.
    """

    def __init__(
        self, samples: Sequence[Sample], spec: PreprocessSpec, train: bool = False, seed: int = 0, hflip: bool = True
    ) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.train = train
        self.seed = seed
        self.hflip = hflip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.samples[index]
        try:
            image = load_image(sample.path)
        except DgsError:
            return None
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        crop = crop_image(image, self.spec, rng)  # [S, S, 3] uint8
        if rng is not None and self.hflip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        return {
            "image": torch.from_numpy(normalize(crop[None], self.spec)[0]),  # [3, S, S]
            "label": torch.tensor(float(sample.label)),
            "index": index,
        }


def collate_skipping_unreadable(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the readable items of a batch; ``skipped`` counts the unreadable ones."""
    good = [item for item in items if item is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(good)}
    if good:
        batch["image"] = torch.stack([item["image"] for item in good])
        batch["label"] = torch.stack([item["label"] for item in good])
        batch["index"] = torch.tensor([item["index"] for item in good])
    return batch
