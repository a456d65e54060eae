"""LoRA on the image encoder and a linear head, trained with BCE: DGS-Net without surgery (the ablation)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainError
from ..lora import LoRAConfig, apply_lora, lora_parameters, merged_copy
from ..models import ClipImageDetector
from .base import AdamOptions, Method, MethodContext

__all__ = ["LoRAClassifier", "LoRAClassifierConfig", "LoRAMethod", "check_lora_blocks", "lora_description"]


class LoRAClassifier(nn.Module):
    """A LoRA-adapted copy of the CLIP image encoder and a linear head: image -> logit of "fake" ``[B]``."""

    def __init__(self, visual: nn.Module, lora: LoRAConfig) -> None:
        super().__init__()
        self.student = copy.deepcopy(visual)
        apply_lora(self.student, lora)
        self.img_fc = nn.Linear(visual.output_dim, 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*lora_parameters(self.student), *self.img_fc.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.img_fc(self.student(images)).squeeze(-1)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        loss = F.binary_cross_entropy_with_logits(self(images), labels)
        return loss, {"loss": loss.item()}

    def inference_model(self) -> ClipImageDetector:
        return ClipImageDetector.from_parts(merged_copy(self.student), self.img_fc)


@dataclass(frozen=True)
class LoRAClassifierConfig(AdamOptions):
    """LoRA + head: DGS-Net's LoRA and optimizer settings, one epoch."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)


def check_lora_blocks(lora: LoRAConfig, context: MethodContext) -> None:
    """Refuse, before training starts, LoRA blocks that the run's encoder does not have."""
    blocks = len(context.clip.visual.transformer.resblocks)
    for index in lora.blocks or ():
        if not -blocks <= index < blocks:
            raise TrainError(f"--lora-blocks: block {index} does not exist ({context.arch} has {blocks} vision blocks)")


def lora_description(lora: LoRAConfig) -> dict[str, Any]:
    """A LoRA-merged encoder's entries in a model package's ``architecture``."""
    return {"head": "linear", "lora_merged": True, "lora_rank": lora.rank, "lora_alpha": lora.alpha,
            "lora_scaling": lora.scaling}


class LoRAMethod(Method):
    """LoRA on q, k, v of the image encoder and a linear head, plain BCE (DGS-Net's ablation without surgery)."""

    name = "lora"
    summary = "LoRA + linear head, BCE (DGS-Net without surgery)"
    options_type = LoRAClassifierConfig
    preprocess = "patch-select"
    small_images = "pad"

    def prepare(self, context: MethodContext) -> None:
        check_lora_blocks(self.options.lora, context)

    def build(self, stage: str, context: MethodContext) -> LoRAClassifier:
        return LoRAClassifier(context.clip.visual, self.options.lora)

    def describe(self) -> dict[str, Any]:
        return lora_description(self.options.lora)
