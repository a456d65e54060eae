"""LoRA on the image encoder and a linear head, trained with BCE: DGS-Net without surgery (the ablation)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LoRAConfig, apply_lora, lora_parameters, merged_copy
from ..models import ClipImageDetector

__all__ = ["LoRAClassifier"]


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
