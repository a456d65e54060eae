"""DGS-Net: distillation-guided gradient surgery on a LoRA-adapted CLIP image encoder.

Per batch, with f the student's image embedding (LoRA encoder, trainable), f0 the frozen pretrained
encoder's embedding, t the frozen text embedding of each image's caption (all projected, un-normalised):

- L_img = BCE(img_fc(f), y); L_img0 = BCE(probe_fc(f0), y) with the stage-1 probe frozen; L_text = BCE(text_fc(t), y);
- g_img = dL_img0/df0 and g_text = dL_text/dt, per sample, detached;
- prior alignment: L_help = mean over the batch of sum_d f * min(g_img, 0);
- orthogonal suppression: with h = relu(g_text) / (||relu(g_text)|| + 1e-6), the gradient reaching f is
  replaced by grad - (grad . h) h, per sample;
- L = L_img + L_text + lambda * L_help. Only LoRA, img_fc and text_fc train.

All of this runs in float32, even when the encoders run under bf16 autocast.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..captions import load_captions
from ..checkpoint import atomic_save, load_head, trained_state
from ..errors import TrainError
from ..lora import LoRAConfig, apply_lora, lora_parameters, merged_copy
from ..models import ClipImageDetector
from .base import AdamOptions, Method, MethodContext, Stage, help_of
from .lora import check_lora_blocks, lora_description
from .probe import LinearProbe

__all__ = ["DGSConfig", "DGSLosses", "DGSMethod", "DGSNet", "project_off"]


def project_off(grad: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Remove from each row of ``grad`` ``[B, D]`` its component along the unit row of ``direction``."""
    return grad - (grad * direction).sum(dim=-1, keepdim=True) * direction


@dataclass
class DGSLosses:
    """The total loss to backpropagate and its parts (detached, for logging)."""

    loss: torch.Tensor
    img: torch.Tensor
    text: torch.Tensor
    help: torch.Tensor
    teacher: torch.Tensor


class DGSNet(nn.Module):
    """Student encoder with LoRA, frozen teacher encoder and text tower, and the three linear heads.

    Args:
        clip: an open_clip CLIP model with pretrained weights; it becomes the frozen teacher and text tower.
        probe_fc: the stage-1 linear probe on the teacher's embedding (frozen here).
        lora: where LoRA goes in the student (a copy of ``clip.visual``).
        help_weight: lambda, the weight of the prior-alignment loss.
    """

    def __init__(
        self,
        clip: nn.Module,
        probe_fc: nn.Linear,
        lora: LoRAConfig,
        help_weight: float = 0.2,
        caption_tokens: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        # Token ids of each training image's caption [N, context], looked up by sample index during training.
        self.register_buffer("caption_tokens", caption_tokens, persistent=False)
        self.student = copy.deepcopy(clip.visual)
        apply_lora(self.student, lora)
        self.clip = clip.requires_grad_(False).eval()  # teacher = clip.visual; text tower = clip.encode_text
        self.probe_fc = probe_fc.requires_grad_(False)
        dim = clip.visual.output_dim
        self.img_fc = nn.Linear(dim, 1)
        self.text_fc = nn.Linear(dim, 1)
        self.help_weight = help_weight

    def train(self, mode: bool = True) -> DGSNet:
        super().train(mode)
        self.clip.eval()  # the teacher never trains, dropout included
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*lora_parameters(self.student), *self.img_fc.parameters(), *self.text_fc.parameters()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logit of "fake" ``[B]`` from the student: the inference path."""
        return self.img_fc(self.student(images)).squeeze(-1)

    def losses(self, images: torch.Tensor, text_tokens: torch.Tensor, labels: torch.Tensor) -> DGSLosses:
        """Losses of one batch; backpropagating ``loss`` applies the surgery to the gradient reaching f.

        The encoders may run under autocast (bf16 on CUDA); the heads, the losses, g_img, g_text, L_help and
        the projection always run in float32, as in DGS-Net's code (in bf16 they would be off by 0.1% to 2% on
        the tiny model). The gradient reaching f is projected in float32, then rounded once to f's dtype.
        """
        f = self.student(images)  # [B, D], in the autocast dtype
        with torch.no_grad():
            f0 = self.clip.visual(images)  # [B, D]
            t = self.clip.encode_text(text_tokens)  # [B, D]
        with torch.autocast(f.device.type, enabled=False):
            f32 = f.float()  # f itself when f is float32 already
            f0 = f0.detach().float().requires_grad_()
            t = t.detach().float().requires_grad_()
            labels = labels.float()
            with torch.enable_grad():
                l_img = F.binary_cross_entropy_with_logits(self.img_fc(f32).squeeze(-1), labels)
                l_img0 = F.binary_cross_entropy_with_logits(self.probe_fc(f0).squeeze(-1), labels)
                l_text = F.binary_cross_entropy_with_logits(self.text_fc(t).squeeze(-1), labels)
                (g_img,) = torch.autograd.grad(l_img0, f0)
                (g_text,) = torch.autograd.grad(l_text, t, retain_graph=True)  # text_fc still learns from l_text
            l_help = (f32 * g_img.clamp(max=0)).sum(dim=-1).mean()
            harmful = torch.relu(g_text)
            harmful = harmful / (harmful.norm(dim=-1, keepdim=True) + 1e-6)  # [B, D]
            if f32.requires_grad:
                # On the float32 tensor: the whole gradient of f (from L_img and L_help) is projected in float32,
                # and only then rounded to f's dtype by the cast's backward.
                f32.register_hook(lambda grad: project_off(grad, harmful))
            loss = l_img + l_text + self.help_weight * l_help
        return DGSLosses(loss, l_img.detach(), l_text.detach(), l_help.detach(), l_img0.detach())

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        if self.caption_tokens is None:
            raise RuntimeError("DGSNet needs caption_tokens to train")
        parts = self.losses(images, self.caption_tokens[indices], labels)
        logs = {name: getattr(parts, name).item() for name in ("loss", "img", "text", "help")}
        return parts.loss, logs

    def inference_model(self) -> ClipImageDetector:
        """The deployable network: the student with LoRA merged into its weights and img_fc as head."""
        return ClipImageDetector.from_parts(merged_copy(self.student), self.img_fc)


@dataclass(frozen=True)
class DGSConfig(AdamOptions):
    """DGS-Net's published settings: a linear probe on the frozen encoder for 3 epochs, then one epoch of LoRA
    (r = alpha = 6, scaled by alpha/sqrt(r), dropout 0.8 on q, k and v of every vision block) with gradient
    surgery at lambda = 0.2; Adam at a constant 1e-4 in both stages."""

    probe_epochs: int = field(default=3, metadata=help_of("DGS-Net: epochs of stage 1, the linear probe on the "
                                                          "frozen encoder whose gradient guides stage 2."))
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    help_weight: float = field(default=0.2, metadata=help_of("DGS-Net: lambda, the weight of the prior-alignment "
                                                             "loss L_help."))
    captions: str | None = field(default=None, metadata=help_of(
        "DGS-Net: JSON file mapping image paths to captions for the text branch (write one with dgs caption); "
        "every readable training image needs one."))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.probe_epochs < 1:
            raise ValueError(f"probe_epochs must be at least 1, got {self.probe_epochs}")


class DGSMethod(Method):
    """DGS-Net: a linear probe on the frozen encoder, then LoRA trained with distillation-guided gradient surgery."""

    name = "dgs"
    summary = "DGS-Net: probe, then LoRA with gradient surgery"
    options_type = DGSConfig
    preprocess = "patch-select"
    small_images = "pad"

    def __init__(self, options: DGSConfig) -> None:
        super().__init__(options)
        self._caption_tokens: torch.Tensor | None = None

    def stages(self) -> list[Stage]:
        return [Stage("probe", self.options.probe_epochs), Stage("dgs", self.options.epochs)]

    def prepare(self, context: MethodContext) -> None:
        import open_clip

        check_lora_blocks(self.options.lora, context)
        if self.options.captions is None:
            raise TrainError("DGS-Net's text branch needs a caption for every training image: write them with "
                             "dgs caption DATA --out captions.json, then train with --captions captions.json")
        captions = load_captions(context.samples, context.data_root, self.options.captions)
        self._caption_tokens = open_clip.get_tokenizer(context.arch)(captions)  # [N, context length]

    def build(self, stage: str, context: MethodContext) -> nn.Module:
        visual = context.clip.visual
        if stage == "probe":
            return LinearProbe(visual, visual.output_dim)
        probe_head = load_head(context.probe_file, visual.output_dim)
        tokens = self._caption_tokens if context.samples is not None else None
        return DGSNet(context.clip, probe_head, self.options.lora, self.options.help_weight, tokens)

    def stage_finished(self, stage: str, module: nn.Module, context: MethodContext) -> None:
        if stage == "probe":  # stage 2's frozen probe_fc
            atomic_save(trained_state(module), context.probe_file)

    def describe(self) -> dict[str, Any]:
        return lora_description(self.options.lora)
