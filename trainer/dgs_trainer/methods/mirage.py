"""MiraGe: multimodal deep prompt learning on a frozen CLIP, with a discriminative (supervised contrastive) loss.

The CLIP backbone stays frozen; what trains is MaPLe-style coupled prompts:

- text: ``tokens`` learnable context vectors in each of the first ``depth`` layers of the text encoder. The
  class prompts are ``"<ctx> real."`` and ``"<ctx> fake."``: layer 0's context replaces the first ``tokens``
  word embeddings of the context phrase (initialised from them), deeper layers replace the hidden states at
  those positions with their own context (initialised N(0, 0.02));
- vision: per layer i < ``depth`` a linear map F_i (text width -> vision width) turns the text context into
  ``tokens`` vision prompt tokens, appended after the patch tokens (layer 0: after the positional embedding,
  before ``ln_pre``; deeper layers: replacing the previous layer's prompt tokens).

With e_real, e_fake the normalised text embeddings of the class prompts (the anchors) and h the normalised
prompted image embedding, the class logits are ``logit_scale * h @ [e_real, e_fake]^T`` and

    L = CE(logits, y) + alpha * L_dis,

L_dis being the supervised contrastive loss of each image embedding against the batch, a FIFO memory bank of
past (detached) embeddings and the two anchors, all labelled. At inference the text branch is folded away:
the anchors become a constant 2 x D matrix and the model outputs the logit of "fake", l_fake - l_real.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer, text_global_pool
from torch import nn

from ..errors import TrainError
from .base import Method, MethodContext, help_of

__all__ = [
    "CLASS_NAMES",
    "MemoryBank",
    "MiraGe",
    "MiraGeConfig",
    "MiraGeMethod",
    "PromptConfig",
    "PromptedImageDetector",
    "PromptLearner",
    "discriminative_loss",
    "prompted_image_features",
]

log = logging.getLogger(__name__)

CLASS_NAMES = ("real", "fake")  # class index = label: 0 real, 1 fake


@dataclass(frozen=True)
class PromptConfig:
    """The shape of MiraGe's coupled prompts."""

    tokens: int = field(default=2, metadata=help_of("MiraGe: learnable context tokens per prompted layer."))
    depth: int = field(default=9, metadata=help_of("MiraGe: layers that receive prompts (1 = shallow prompts only, "
                                                   "the ablation)."))
    context: str = field(default="a photo of a", metadata=help_of(
        "MiraGe: phrase whose first words initialise the layer-0 text context."))

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.depth < 1:
            raise ValueError(f"prompt tokens and depth must be at least 1, got {self.tokens} and {self.depth}")


@dataclass(frozen=True)
class MiraGeConfig:
    """MiraGe's settings. Prompt and loss defaults are the paper's (prompt depth 9, 2 context tokens, M = 64,
    tau = 0.07, alpha = 0.1). The optimizer is MaPLe's ViT-B/16 recipe, on which the paper builds and whose
    settings it does not restate: SGD with momentum, 5 epochs, one constant warm-up epoch at 1e-5, then cosine
    annealing. Ablations: ``prompt.depth=1`` (shallow prompts), ``dis_weight=0`` (no L_dis), ``memory_size=0``
    (no memory bank)."""

    prompt: PromptConfig = field(default_factory=PromptConfig)
    dis_weight: float = field(default=0.1, metadata=help_of(
        "MiraGe: alpha, weight of the discriminative loss L_dis (0 = CE only, the ablation)."))
    memory_size: int = field(default=64, metadata=help_of(
        "MiraGe: embeddings in the FIFO memory bank of L_dis (0 = no memory bank, the ablation)."))
    temperature: float = field(default=0.07, metadata=help_of("MiraGe: temperature tau of L_dis."))
    epochs: int = field(default=5, metadata=help_of("Epochs of the method's own stage."))
    lr: float = field(default=3.5e-3, metadata=help_of("Learning rate."))
    momentum: float = field(default=0.9, metadata=help_of("MiraGe: SGD momentum."))
    weight_decay: float = field(default=5e-4, metadata=help_of("MiraGe: SGD weight decay."))
    warmup_epochs: int = field(default=1, metadata=help_of(
        "MiraGe: epochs at --warmup-lr before the cosine schedule starts."))
    warmup_lr: float = field(default=1e-5, metadata=help_of("MiraGe: constant learning rate of the warm-up epochs."))

    def __post_init__(self) -> None:
        if self.memory_size < 0 or self.dis_weight < 0:
            raise ValueError(f"memory size and dis weight cannot be negative: {self.memory_size}, {self.dis_weight}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.epochs < 1 or not self.lr > 0:
            raise ValueError(f"epochs must be at least 1 and lr positive, got {self.epochs} and {self.lr}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be at least 0 and fewer than the {self.epochs} training epochs, "
                             f"got {self.warmup_epochs}")
        if not 0 <= self.warmup_lr <= self.lr:
            raise ValueError(f"warmup_lr must be between 0 and lr ({self.lr}), got {self.warmup_lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay cannot be negative and momentum must be in [0, 1)")


def _text_tower(clip: nn.Module) -> SimpleNamespace:
    """The parts of an open_clip text encoder that prompting re-runs layer by layer."""
    tower = getattr(clip, "text", None)
    if tower is None:  # open_clip.CLIP keeps its text tower inline
        tower, pool_type, eos_id = clip, clip.text_pool_type, getattr(clip, "text_eos_id", None)
    else:  # CustomTextCLIP
        if not hasattr(tower, "token_embedding") or getattr(tower, "cls_emb", None) is not None:
            raise ValueError(f"MiraGe needs a CLIP-style text transformer, got {type(tower).__name__}")
        if getattr(tower, "use_pad_mask", False):
            raise ValueError("MiraGe does not support text encoders with padding masks")
        pool_type, eos_id = tower.pool_type, getattr(tower, "eos_id", None)
    return SimpleNamespace(
        token_embedding=tower.token_embedding,
        positional_embedding=tower.positional_embedding,
        transformer=tower.transformer,
        ln_final=tower.ln_final,
        projection=tower.text_projection,
        attn_mask=tower.attn_mask,
        pool_type=pool_type,
        eos_id=eos_id,
    )


def _run_blocks(transformer: nn.Module, x: torch.Tensor, before_block: Callable, attn_mask=None) -> torch.Tensor:
    """Run ``transformer``'s blocks on batch-first ``x``, letting ``before_block(i, x)`` rewrite the tokens."""
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(transformer.resblocks):
        x = before_block(i, x)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def prompted_image_features(visual: VisionTransformer, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Image embedding ``[B, D]`` (un-normalised) of an open_clip ViT with vision prompt tokens.

    Args:
        visual: the frozen image encoder.
        images: ``[B, 3, S, S]``.
        prompts: ``[depth, n, width]``; layer 0's are appended after the positional embedding, those of layer
            i replace the prompt tokens entering block i. The class token alone is pooled.
    """
    depth, n = prompts.shape[:2]
    x = visual.conv1(images)  # [B, width, grid, grid]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid**2, width]
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    prompts = prompts.to(x.dtype)
    x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)  # [B, 1 + grid**2 + n, width]
    x = visual.ln_pre(x)

    def deep_prompts(i: int, x: torch.Tensor) -> torch.Tensor:
        if 0 < i < depth:
            x = torch.cat([x[:, :-n], prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        return x

    x = _run_blocks(visual.transformer, x, deep_prompts)
    pooled, _ = visual._pool(x[:, :-n])  # prompt tokens are not pooled
    return pooled @ visual.proj if visual.proj is not None else pooled


class PromptLearner(nn.Module):
    """The trainable part of MiraGe: text context per layer and the maps F_i to vision prompts.

    Args:
        text_width: width of the text transformer.
        vision_width: width of the vision transformer.
        init: ``[tokens, text_width]`` initial layer-0 context (word embeddings of the context phrase).
        depth: layers that receive prompts.
    """

    def __init__(self, text_width: int, vision_width: int, init: torch.Tensor, depth: int) -> None:
        super().__init__()
        tokens = init.shape[0]
        self.context = nn.Parameter(init.clone())  # [tokens, text_width], layer 0
        self.deep_context = nn.Parameter(torch.randn(depth - 1, tokens, text_width) * 0.02)  # layers 1..depth-1
        self.couplings = nn.ModuleList(nn.Linear(text_width, vision_width) for _ in range(depth))  # F_i

    @property
    def depth(self) -> int:
        return len(self.couplings)

    def text_prompts(self) -> torch.Tensor:
        """``[depth, tokens, text_width]``: the context of every prompted text layer."""
        return torch.cat([self.context[None], self.deep_context], dim=0)

    def vision_prompts(self) -> torch.Tensor:
        """``[depth, tokens, vision_width]``: F_i applied to layer i's text context."""
        return torch.stack([f(ctx) for f, ctx in zip(self.couplings, self.text_prompts(), strict=True)])


class MemoryBank(nn.Module):
    """FIFO store of the last ``size`` detached embeddings and their labels (buffers, so checkpoints keep it)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # embeddings ever pushed

    def __len__(self) -> int:
        return min(int(self.count), self.size)

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch, dropping the oldest entries beyond ``size``."""
        if self.size == 0:
            return
        embeddings, labels = embeddings.detach()[-self.size :], labels.detach()[-self.size :]
        slots = (int(self.count) + torch.arange(len(labels), device=self.labels.device)) % self.size
        self.embeddings[slots] = embeddings.to(self.embeddings.dtype)
        self.labels[slots] = labels.to(self.labels.dtype)
        self.count += len(labels)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored embeddings ``[m, D]`` and labels ``[m]``, oldest first."""
        n = len(self)
        order = (int(self.count) - n + torch.arange(n, device=self.labels.device)) % max(self.size, 1)
        return self.embeddings[order], self.labels[order]


def discriminative_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    bank_embeddings: torch.Tensor,
    bank_labels: torch.Tensor,
    anchors: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Supervised contrastive loss of each embedding against all other members, anchors included.

    Members are the batch ``[B, D]``, the memory bank ``[m, D]`` and the text anchors ``[C, D]`` (row c has
    label c), all L2-normalised. For each batch embedding i, positives are the other members with its label;
    the denominator holds every other member. The loss averages -log softmax over positives, then over i.
    """
    members = torch.cat([embeddings, bank_embeddings, anchors])  # [N, D]
    member_labels = torch.cat([labels, bank_labels, torch.arange(len(anchors), device=labels.device)])
    similarity = embeddings @ members.T / temperature  # [B, N]
    itself = torch.zeros_like(similarity, dtype=torch.bool)
    itself[:, : len(embeddings)] = torch.eye(len(embeddings), dtype=torch.bool, device=itself.device)
    similarity = similarity.masked_fill(itself, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positive = (labels[:, None] == member_labels[None, :]) & ~itself
    per_anchor = torch.where(positive, log_prob, 0.0).sum(dim=1) / positive.sum(dim=1)
    return -per_anchor.mean()


class MiraGe(nn.Module):
    """Frozen CLIP with MaPLe-style coupled prompts, trained with CE + alpha * L_dis.

    Args:
        clip: an open_clip CLIP model with a ViT image encoder; frozen here.
        tokenizer: the model's open_clip tokenizer (``open_clip.get_tokenizer(arch)``).
        config: prompt shape and loss settings.
    """

    def __init__(self, clip: nn.Module, tokenizer: Callable, config: MiraGeConfig) -> None:
        super().__init__()
        if not isinstance(clip.visual, VisionTransformer):
            raise ValueError(f"MiraGe needs a ViT image encoder, got {type(clip.visual).__name__}")
        self.clip = clip.requires_grad_(False).eval()
        self.config = config
        text = _text_tower(clip)
        text_layers, vision_layers = len(text.transformer.resblocks), len(clip.visual.transformer.resblocks)
        depth = config.prompt.depth
        if depth > min(text_layers, vision_layers):
            raise ValueError(
                f"prompt depth {depth} exceeds the encoder's layers ({text_layers} text, {vision_layers} "
                f"vision); use a depth of at most {min(text_layers, vision_layers)}"
            )
        n, context = config.prompt.tokens, config.prompt.context
        # Tokens 1..n of each class prompt are the learnable context; the context phrase is padded with
        # placeholder words when it is shorter, and its words after the n-th stay as fixed text (MaPLe's rule).
        words = len(tokenizer([context])[0].nonzero()) - 2 if context.strip() else 0
        placeholders = max(n - words, 0)
        phrase = " ".join(["X"] * placeholders + ([context.strip()] if words else []))
        tokens = tokenizer([f"{phrase} {name}." for name in CLASS_NAMES])  # [2, T]
        with torch.no_grad():
            embedded = text.token_embedding(tokens.to(text.positional_embedding.device))  # [2, T, text_width]
        init = embedded[0, 1 : 1 + n].clone()
        init[:placeholders] = torch.randn(placeholders, init.shape[1], device=init.device) * 0.02
        self.register_buffer("class_tokens", tokens, persistent=False)
        self.register_buffer("class_embeddings", embedded, persistent=False)
        self.prompts = PromptLearner(embedded.shape[-1], clip.visual.transformer.width, init, depth)
        self.memory = MemoryBank(config.memory_size, clip.visual.output_dim)

    def train(self, mode: bool = True) -> MiraGe:
        super().train(mode)
        self.clip.eval()  # frozen backbone: no dropout
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.prompts.parameters())

    def anchors(self) -> torch.Tensor:
        """``[2, D]``: normalised text embeddings of the "real" and "fake" class prompts."""
        text = _text_tower(self.clip)
        n, context = self.config.prompt.tokens, self.prompts.text_prompts()  # [depth, n, text_width]
        cast = text.transformer.get_cast_dtype() if hasattr(text.transformer, "get_cast_dtype") else torch.float32
        embedded = self.class_embeddings.to(cast)
        x = torch.cat([embedded[:, :1], context[0].to(cast).expand(2, -1, -1), embedded[:, 1 + n :]], dim=1)
        x = x + text.positional_embedding.to(cast)

        def deep_context(i: int, x: torch.Tensor) -> torch.Tensor:
            if 0 < i < len(context):
                x = torch.cat([x[:, :1], context[i].to(x.dtype).expand(2, -1, -1), x[:, 1 + n :]], dim=1)
            return x

        x = _run_blocks(text.transformer, x, deep_context, attn_mask=text.attn_mask)
        x = text_global_pool(text.ln_final(x), self.class_tokens, text.pool_type, eos_token_id=text.eos_id)
        if isinstance(text.projection, nn.Linear):
            x = text.projection(x)
        elif text.projection is not None:
            x = x @ text.projection
        return F.normalize(x.float(), dim=-1)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]``: normalised prompted image embeddings."""
        features = prompted_image_features(self.clip.visual, images, self.prompts.vision_prompts())
        return F.normalize(features.float(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logit of "fake" ``[B]``: l_fake - l_real, so its sigmoid is the softmax probability of "fake"."""
        logits = self.logit_scale() * self.image_embeddings(images) @ self.anchors().T  # [B, 2]
        return logits[:, 1] - logits[:, 0]

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        labels = labels.long()
        h, anchors = self.image_embeddings(images), self.anchors()
        # Logits reach ~100 x cosine: under bf16 autocast their differences would be rounded by ~0.25.
        with torch.autocast(h.device.type, enabled=False):
            ce = F.cross_entropy(self.logit_scale() * h @ anchors.T, labels)
            loss, logs = ce, {"ce": ce.item()}
            if self.config.dis_weight > 0:
                bank_h, bank_labels = self.memory.contents()
                dis = discriminative_loss(h, labels, bank_h, bank_labels, anchors, self.config.temperature)
                loss = loss + self.config.dis_weight * dis
                logs["dis"] = dis.item()
        if self.training:
            self.memory.push(h, labels)
        return loss, {"loss": loss.item(), **logs}

    def inference_model(self) -> PromptedImageDetector:
        """The deployable network: the prompted image encoder and the anchors as a constant matrix."""
        with torch.no_grad():
            return PromptedImageDetector(
                self.clip.visual, self.prompts.vision_prompts(), self.anchors(), self.logit_scale()
            ).eval()


class PromptedImageDetector(nn.Module):
    """Image ``[B, 3, S, S]`` -> logit of "fake" ``[B]`` through a prompted encoder and fixed class anchors.

    Args:
        visual: the frozen CLIP image encoder.
        prompts: ``[depth, n, width]`` vision prompt tokens.
        anchors: ``[2, D]`` normalised text embeddings of "real" and "fake".
        logit_scale: CLIP's temperature, exponentiated.
    """

    def __init__(self, visual: nn.Module, prompts: torch.Tensor, anchors: torch.Tensor, logit_scale) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("prompts", prompts.detach().clone())
        self.register_buffer("anchors", (logit_scale * anchors).detach().clone())  # scale folded in

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = F.normalize(prompted_image_features(self.visual, images, self.prompts), dim=-1)  # [B, D]
        logits = h @ self.anchors.T  # [B, 2]
        return logits[:, 1] - logits[:, 0]


class MiraGeMethod(Method):
    """MiraGe: multimodal deep prompts on a frozen CLIP, CE + supervised contrastive loss on text anchors."""

    name = "mirage"
    summary = "multimodal deep prompts, CE + supervised contrastive loss"
    options_type = MiraGeConfig
    preprocess = "clip"
    small_images = "resize"

    def build(self, stage: str, context: MethodContext) -> MiraGe:
        import open_clip

        try:
            return MiraGe(context.clip, open_clip.get_tokenizer(context.arch), self.options)
        except ValueError as e:
            raise TrainError(f"{context.arch}: {e}") from None

    def optimizer(self, stage: str, module: nn.Module, steps_per_epoch: int, epochs: int):
        """SGD with momentum and weight decay: ``warmup_epochs`` at ``warmup_lr``, then cosine annealing to zero."""
        options = self.options
        optimizer = torch.optim.SGD(module.trainable_parameters(), lr=options.lr, momentum=options.momentum,
                                    weight_decay=options.weight_decay)
        schedulers = torch.optim.lr_scheduler
        warmup, total = options.warmup_epochs * steps_per_epoch, epochs * steps_per_epoch
        if warmup == 0:
            return optimizer, schedulers.CosineAnnealingLR(optimizer, T_max=total)
        constant = schedulers.ConstantLR(optimizer, factor=options.warmup_lr / options.lr, total_iters=warmup)
        cosine = schedulers.CosineAnnealingLR(optimizer, T_max=total - warmup)
        return optimizer, schedulers.SequentialLR(optimizer, [constant, cosine], milestones=[warmup])

    def describe(self) -> dict[str, Any]:
        # The text branch is folded into a constant 2 x D anchor matrix.
        return {"head": "text anchors (real, fake)", "lora_merged": False,
                "prompt_tokens": self.options.prompt.tokens, "prompt_depth": self.options.prompt.depth}
