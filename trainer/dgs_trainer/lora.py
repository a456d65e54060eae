"""LoRA on the q, k and v projections of open_clip's attention, and its exact merge back into the weights.

open_clip's blocks use `nn.MultiheadAttention`, which packs q, k and v into one ``in_proj_weight`` ``[3D, D]``.
`LoRAAttention` replaces such a module: it keeps the packed (frozen) weights and adds, for each chosen
projection, a low-rank update ``B @ A * scale`` acting on its own third of the packed projection. As in
DGS-Net's code, where q, k and v are three separate LoRA linear layers, each projection feeds its update with
its own dropout draw of the input, and ``scale`` is ``alpha / sqrt(r)`` (``alpha / r``, the LoRA paper's rule,
is kept for runs that used it). `merge_lora` folds the updates into ``in_proj_weight`` and puts the plain
`nn.MultiheadAttention` back, so export sees an ordinary CLIP encoder.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRAConfig", "LoRAAttention", "apply_lora", "merge_lora", "merged_copy", "lora_parameters"]

PROJECTIONS = ("q", "k", "v")
# How alpha and r give the update's scale: DGS-Net's alpha / sqrt(r), or the LoRA paper's alpha / r.
SCALINGS = ("sqrt", "linear")


@dataclass(frozen=True)
class LoRAConfig:
    """Where and how big the low-rank updates are (each field's ``help`` metadata is its `dgs train` flag's help).

    ``scaling`` ``"sqrt"`` multiplies updates by ``alpha / sqrt(rank)`` (DGS-Net's rule: 2.449 at rank = alpha = 6),
    ``"linear"`` by ``alpha / rank`` (the LoRA paper's rule, which earlier dgs runs used).
    """

    rank: int = field(default=6, metadata={"help": "LoRA rank r of each update."})
    alpha: float = field(default=6.0, metadata={"help": "LoRA alpha, the numerator of the updates' scale."})
    dropout: float = field(default=0.8, metadata={
        "help": "Dropout on the input of each LoRA update, drawn separately for q, k and v."})
    targets: tuple[str, ...] = field(default=PROJECTIONS, metadata={
        "help": "Projections that get LoRA: comma-separated subset of q,k,v."})
    blocks: tuple[int, ...] | None = field(default=None, metadata={
        "help": "Vision blocks that get LoRA: comma-separated indices (negative from the end), or all."})
    scaling: str = field(default="sqrt", metadata={
        "help": "Scale of the updates: sqrt (alpha/sqrt(r), DGS-Net's) or linear (alpha/r).", "choices": SCALINGS})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = set(self.targets) - set(PROJECTIONS)
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of q, k, v; got {self.targets}")
        if not isinstance(self.scaling, str) or self.scaling not in SCALINGS:
            raise ValueError(
                f"LoRA scaling must be 'sqrt' (alpha / sqrt(r)) or 'linear' (alpha / r), got {self.scaling!r}"
            )

    @property
    def scale(self) -> float:
        """The factor applied to every update ``B @ A``."""
        return self.alpha / (math.sqrt(self.rank) if self.scaling == "sqrt" else self.rank)


class LoRAAttention(nn.Module):
    """Self-attention with the call signature of `nn.MultiheadAttention`, plus LoRA on q, k and/or v."""

    def __init__(self, base: nn.MultiheadAttention, config: LoRAConfig) -> None:
        super().__init__()
        if not base._qkv_same_embed_dim or base.in_proj_weight is None:
            raise ValueError("LoRA needs attention with packed q, k, v projections (in_proj_weight)")
        self.base = base
        self.config = config
        self.scaling = config.scale
        self.dropout = nn.Dropout(config.dropout)
        dim = base.embed_dim
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in config.targets:
            a = torch.empty(config.rank, dim)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)  # [r, D]
            self.lora_B[name] = nn.Parameter(torch.zeros(dim, config.rank))  # [D, r]: starts as the identity update

    def delta_weight(self) -> torch.Tensor:
        """The update of the packed ``in_proj_weight`` ``[3D, D]`` (zero where a projection is not adapted)."""
        dim = self.base.embed_dim
        parts = []
        for name in PROJECTIONS:
            if name in self.lora_A:
                parts.append(self.lora_B[name] @ self.lora_A[name] * self.scaling)
            else:
                parts.append(self.base.in_proj_weight.new_zeros(dim, dim))
        return torch.cat(parts)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, key_padding_mask=None, **_):
        if key_padding_mask is not None or need_weights:
            raise NotImplementedError("LoRAAttention supports neither key_padding_mask nor need_weights")
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise NotImplementedError("LoRAAttention is for self-attention (query = key = value)")
        base = self.base
        x = query if base.batch_first else query.transpose(0, 1)  # [B, N, D]
        qkv = F.linear(x, base.in_proj_weight, base.in_proj_bias)  # [B, N, 3D]
        q, k, v = qkv.chunk(3, dim=-1)
        # One dropout call per projection, hence an independent mask for each, as DGS-Net's separate q, k and v
        # layers have (a shared mask would correlate the three updates).
        updates = {
            name: (self.dropout(x) @ self.lora_A[name].T) @ self.lora_B[name].T * self.scaling  # [B, N, D]
            for name in self.lora_A
        }
        q = q + updates["q"] if "q" in updates else q
        k = k + updates["k"] if "k" in updates else k
        v = v + updates["v"] if "v" in updates else v
        b, n, d = x.shape
        heads = base.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, heads, d // heads).transpose(1, 2)  # [B, H, N, D/H]

        out = F.scaled_dot_product_attention(
            split(q), split(k), split(v), attn_mask=attn_mask, dropout_p=base.dropout if self.training else 0.0
        )
        out = base.out_proj(out.transpose(1, 2).reshape(b, n, d))  # [B, N, D]
        return (out if base.batch_first else out.transpose(0, 1)), None


def _vision_blocks(visual: nn.Module) -> nn.ModuleList:
    try:
        return visual.transformer.resblocks
    except AttributeError:
        raise ValueError(
            f"{type(visual).__name__} is not an open_clip vision transformer (no transformer.resblocks)"
        ) from None


def apply_lora(visual: nn.Module, config: LoRAConfig) -> list[LoRAAttention]:
    """Freeze ``visual`` and put `LoRAAttention` in the chosen blocks; returns the new modules."""
    blocks = _vision_blocks(visual)
    chosen: Sequence[int] = range(len(blocks)) if config.blocks is None else config.blocks
    for index in chosen:
        if not -len(blocks) <= index < len(blocks):
            raise ValueError(f"LoRA block {index} does not exist (the encoder has {len(blocks)} blocks)")
    for p in visual.parameters():
        p.requires_grad_(False)
    adapted = []
    for index in chosen:
        block = blocks[index]
        if not isinstance(block.attn, nn.MultiheadAttention):
            raise ValueError(f"block {index} attention is {type(block.attn).__name__}, not nn.MultiheadAttention")
        block.attn = LoRAAttention(block.attn, config)
        adapted.append(block.attn)
    return adapted


@torch.no_grad()
def merge_lora(visual: nn.Module) -> int:
    """Fold every LoRA update into its ``in_proj_weight`` and restore plain attention; returns how many."""
    merged = 0
    for block in _vision_blocks(visual):
        if isinstance(block.attn, LoRAAttention):
            lora = block.attn
            lora.base.in_proj_weight += lora.delta_weight().to(lora.base.in_proj_weight.dtype)
            block.attn = lora.base
            merged += 1
    return merged


def merged_copy(visual: nn.Module) -> nn.Module:
    """A copy of ``visual`` with its LoRA updates merged in: a plain open_clip encoder."""
    merged = copy.deepcopy(visual)
    merge_lora(merged)
    return merged


def lora_parameters(visual: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters of ``visual``."""
    modules = [m for m in visual.modules() if isinstance(m, LoRAAttention)]
    return [p for m in modules for p in (*m.lora_A.values(), *m.lora_B.values())]
