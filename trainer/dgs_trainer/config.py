"""The configuration of a training run: one dataclass, filled by `dgs train`'s flags and saved in the run."""

from __future__ import annotations

from dataclasses import dataclass

from dgs_sdk.preprocess import PreprocessSpec

from .captions import DEFAULT_CAPTION_TEMPLATE
from .lora import PROJECTIONS, LoRAConfig
from .methods.mirage import MiraGeConfig

__all__ = ["METHODS", "DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_PREPROCESS", "TrainConfig", "TrainError"]

METHODS = ("probe", "lora", "dgs", "mirage")
# Per-method defaults of --epochs, --lr and --preprocess: DGS-Net's published schedule (Adam, constant lr) for
# probe, lora and dgs; MaPLe's ViT-B/16 recipe for mirage (SGD, 5 epochs, one of constant warm-up at 1e-5, then
# cosine), since the MiraGe paper builds on MaPLe and its own optimiser settings are not published with code.
DEFAULT_EPOCHS = {"probe": 3, "lora": 1, "dgs": 1, "mirage": 5}
DEFAULT_LR = {"probe": 1e-4, "lora": 1e-4, "dgs": 1e-4, "mirage": 3.5e-3}
DEFAULT_PREPROCESS = {"probe": "patch-select", "lora": "patch-select", "dgs": "patch-select", "mirage": "clip"}


class TrainError(ValueError):
    """A training run cannot start or continue; the message says why."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; `dgs train` fills it from its flags.

    Defaults are DGS-Net's published settings (ViT-L/14 `openai`, LoRA r = alpha = 6 with dropout 0.8 on q, k, v
    of every vision block, Adam lr 1e-4, batch 32, probe 3 epochs then surgery 1 epoch, lambda = 0.2,
    patch-select preprocessing with horizontal flips). ``epochs``, ``lr`` and ``preprocess`` left as ``None``
    take the method's default (`DEFAULT_EPOCHS`, `DEFAULT_LR`, `DEFAULT_PREPROCESS`); MiraGe's settings are the
    ``prompt_*``, ``dis_weight``, ``memory_size``, ``temperature`` fields and SGD's ``momentum``,
    ``weight_decay``, ``warmup_epochs`` and ``warmup_lr``.
    """

    data: str
    out: str
    method: str = "dgs"
    arch: str = "ViT-L-14"
    pretrained: str = "openai"
    val: str | None = None
    split: str | None = None
    val_split: str | None = None
    epochs: int | None = None
    probe_epochs: int = 3
    batch_size: int = 32
    accumulate: int = 1
    lr: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    lora_rank: int = 6
    lora_alpha: float = 6.0
    lora_dropout: float = 0.8
    lora_targets: str = "q,k,v"
    lora_blocks: str = "all"
    help_weight: float = 0.2
    prompt_tokens: int = 2
    prompt_depth: int = 9
    prompt_context: str = "a photo of a"
    dis_weight: float = 0.1
    memory_size: int = 64
    temperature: float = 0.07
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    captions: str | None = None
    caption_template: str = DEFAULT_CAPTION_TEMPLATE
    preprocess: str | None = None
    hflip: bool = True
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    save_every: int = 0
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise TrainError(f"method {self.method!r} is unknown (expected one of {', '.join(METHODS)})")
        for name in ("batch_size", "accumulate", "probe_epochs", "lora_rank"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise TrainError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if self.preprocess is None:
            self.preprocess = DEFAULT_PREPROCESS[self.method]
        if not self.lr > 0:
            raise TrainError(f"lr must be positive, got {self.lr}")
        self.lora()  # --lora-* and MiraGe's flags are checked before anything runs
        self.mirage()
        if self.method == "mirage":
            if not 0 <= self.warmup_epochs < self.stages()[-1][1]:
                raise TrainError(f"warmup_epochs must be at least 0 and fewer than the {self.stages()[-1][1]} "
                                 f"training epochs, got {self.warmup_epochs}")
            if not 0 <= self.warmup_lr <= self.lr:
                raise TrainError(f"warmup_lr must be between 0 and lr ({self.lr}), got {self.warmup_lr}")
            if self.weight_decay < 0 or not 0 <= self.momentum < 1:
                raise TrainError("weight_decay cannot be negative and momentum must be in [0, 1)")

    def lora(self) -> LoRAConfig:
        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        try:
            blocks = None if self.lora_blocks == "all" else tuple(int(b) for b in self.lora_blocks.split(","))
        except ValueError:
            raise TrainError(
                f"--lora-blocks must be 'all' or comma-separated integers, got {self.lora_blocks!r}"
            ) from None
        try:
            return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, targets or PROJECTIONS, blocks)
        except ValueError as e:
            raise TrainError(str(e)) from None

    def mirage(self) -> MiraGeConfig:
        try:
            return MiraGeConfig(self.prompt_tokens, self.prompt_depth, self.prompt_context, self.dis_weight,
                                self.memory_size, self.temperature)
        except ValueError as e:
            raise TrainError(str(e)) from None

    def stages(self) -> list[tuple[str, int]]:
        """(stage, epochs) in order: dgs trains a probe first, the others train themselves."""
        if self.method == "dgs":
            return [("probe", self.probe_epochs), ("dgs", self.epochs or DEFAULT_EPOCHS["dgs"])]
        return [(self.method, self.epochs or DEFAULT_EPOCHS[self.method])]

    def preprocess_spec(self, image_size: int) -> PreprocessSpec:
        if self.preprocess == "patch-select":
            return PreprocessSpec.patch_select(size=image_size)
        if self.preprocess == "clip":
            return PreprocessSpec.clip(size=image_size)
        raise TrainError(f"preprocess {self.preprocess!r} is unknown (expected patch-select or clip)")
