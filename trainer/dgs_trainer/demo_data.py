"""A small labelled dataset made on the spot: real photographs and images from two generators trained here.

Real images are crops of scikit-image's sample photographs. Generated images come from two small generative
networks trained for a few seconds on those crops, each leaving its own genuine artefacts:

- ``autoencoder``: a convolutional autoencoder (stride-2 convolutions down, transposed convolutions up)
  that reconstructs crops it did not see, with the checkerboard traces of transposed convolutions;
- ``upsampler``: a super-resolution network that rebuilds crops from a quarter of their size with
  nearest-neighbour upsampling and convolutions, with blocky, over-smoothed textures.

Layout (ForenSynths style), with disjoint real crops in each split::

    ROOT/train/autoencoder/{0_real,1_fake}   the generator seen in training
    ROOT/val/autoencoder/{0_real,1_fake}     for validation and threshold calibration
    ROOT/test/{autoencoder,upsampler}/{0_real,1_fake}   upsampler: a generator never seen in training
    ROOT/captions.json                       what each image shows (DGS-Net's text branch), as dgs caption writes
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .samples import SAMPLE_CAPTIONS, sample_photos

__all__ = ["DemoDataConfig", "make_demo_dataset", "Autoencoder", "Upsampler"]

log = logging.getLogger(__name__)


@dataclass
class DemoDataConfig:
    """Sizes of the demo dataset and how long its generators train."""

    crop: int = 96
    train_per_class: int = 48
    val_per_class: int = 16
    test_per_class: int = 16
    generator_steps: int = 150
    seed: int = 0


class Autoencoder(nn.Module):
    """96 -> 12 -> 96 pixels: stride-2 convolutions down, transposed convolutions up."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, 8, 4, 2, 1),
        )
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(8, width, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class Upsampler(nn.Module):
    """Quarter-size image -> full size: nearest-neighbour upsampling twice, each followed by convolutions."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(width, 3, 3, 1, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(F.interpolate(x, scale_factor=0.25, mode="area"))


def _crops(photos: dict[str, np.ndarray], count: int, size: int,
           rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """``count`` random crops ``[count, size, size, 3]`` uint8 from randomly rescaled photographs, and the name of
    the photograph each comes from."""
    out = np.empty((count, size, size, 3), np.uint8)
    names = list(photos)
    sources = []
    for i in range(count):
        sources.append(names[rng.integers(len(names))])
        photo = photos[sources[-1]]
        scale = rng.uniform(size / min(photo.shape[:2]) * 1.2, 1.0)
        h, w = int(photo.shape[0] * scale), int(photo.shape[1] * scale)
        resized = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        out[i] = resized[top : top + size, left : left + size]
    return out, sources


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, S, S]


def _to_images(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_generator(model: nn.Module, crops: np.ndarray, steps: int, seed: int) -> nn.Module:
    """Fit ``model`` to reproduce ``crops`` (L1 loss, Adam) for ``steps`` batches of 16."""
    torch.manual_seed(seed)
    data = _to_tensor(crops)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (16,), generator=g)]
        loss = F.l1_loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log.info("%s trained %d steps, L1 %.4f", type(model).__name__, steps, loss.item())
    return model.eval()


@torch.no_grad()
def _generate(model: nn.Module, crops: np.ndarray) -> np.ndarray:
    return np.concatenate([_to_images(model(_to_tensor(crops[i : i + 32]))) for i in range(0, len(crops), 32)])


def _write(folder: Path, images: np.ndarray, prefix: str, sources: list[str], captions: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, source) in enumerate(zip(images, sources, strict=True)):
        path = folder / f"{prefix}{i:04d}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]))
        captions[str(path)] = SAMPLE_CAPTIONS[source]


def make_demo_dataset(root: str | Path, config: DemoDataConfig | None = None) -> Path:
    """Write the demo dataset under ``root`` and return it."""
    config = config or DemoDataConfig()
    root = Path(root)
    rng = np.random.default_rng(config.seed)
    photos = sample_photos()
    n_train, n_val, n_test = config.train_per_class, config.val_per_class, config.test_per_class
    # Disjoint crops: the generators' own training crops, then real and source crops of each split.
    fit_crops, _ = _crops(photos, 256, config.crop, rng)
    autoencoder = train_generator(Autoencoder(), fit_crops, config.generator_steps, config.seed)
    upsampler = train_generator(Upsampler(), fit_crops, config.generator_steps, config.seed + 1)
    splits = {"train": (n_train, ["autoencoder"]), "val": (n_val, ["autoencoder"]),
              "test": (n_test, ["autoencoder", "upsampler"])}
    generators = {"autoencoder": autoencoder, "upsampler": upsampler}
    captions: dict[str, str] = {}
    for split, (count, names) in splits.items():
        for name in names:
            real, real_sources = _crops(photos, count, config.crop, rng)
            crops, fake_sources = _crops(photos, count, config.crop, rng)
            _write(root / split / name / "0_real", real, "real_", real_sources, captions)
            _write(root / split / name / "1_fake", _generate(generators[name], crops), "fake_", fake_sources, captions)
    (root / "captions.json").write_text(json.dumps(captions, indent=1))
    return root
