"""Linear probe on frozen CLIP image features (UniversalFakeDetect's baseline and DGS-Net's stage 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models import ClipImageDetector
from .base import AdamOptions, Method, MethodContext, help_of

__all__ = ["LinearProbe", "ProbeConfig", "ProbeMethod"]


class LinearProbe(ClipImageDetector):
    """A frozen CLIP image encoder and a trainable linear head: image ``[B, 3, S, S]`` -> logit of "fake" ``[B]``."""

    def __init__(self, visual: nn.Module, embed_dim: int) -> None:
        super().__init__(visual, embed_dim)
        self.visual.requires_grad_(False)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.visual.eval()  # frozen features: no dropout, fixed normalisation statistics
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.visual(image)  # [B, D]
        return self.head(features).squeeze(-1)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self(images), labels)
        return loss, {"loss": loss.item()}

    def inference_model(self) -> ClipImageDetector:
        return ClipImageDetector.from_parts(self.visual, self.head)


@dataclass(frozen=True)
class ProbeConfig(AdamOptions):
    """The linear probe's settings: DGS-Net's stage-1 schedule (Adam at 1e-4, 3 epochs)."""

    epochs: int = field(default=3, metadata=help_of("Epochs of the method's own stage."))


class ProbeMethod(Method):
    """UniversalFakeDetect's baseline: a linear head on frozen CLIP image features."""

    name = "probe"
    summary = "linear probe on frozen CLIP features"
    options_type = ProbeConfig
    preprocess = "patch-select"
    small_images = "pad"

    def build(self, stage: str, context: MethodContext) -> LinearProbe:
        return LinearProbe(context.clip.visual, context.clip.visual.output_dim)

    def describe(self) -> dict[str, Any]:
        return {"head": "linear", "lora_merged": False}
