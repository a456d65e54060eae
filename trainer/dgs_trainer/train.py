"""Training runs: a run folder with the resolved config, safetensors checkpoints, metrics and resumption.

Run folder::

    RUN/
    ├── config.json              the resolved `TrainConfig`, preprocessing spec and provenance
    ├── metrics.jsonl            one JSON line per optimizer step and per validation
    ├── checkpoints/last.safetensors   trained tensors, optimizer state, position (stage, epoch, batch)
    ├── probe.safetensors        DGS-Net's stage-1 probe head (dgs method only)
    ├── backbone.safetensors     the backbone, only when it was randomly initialised (--pretrained none)
    └── model.safetensors        the trained tensors of the finished run (LoRA, heads, prompts)

Only trained tensors are stored; the frozen backbone comes from ``arch`` and ``pretrained`` again (a random
one, ``--pretrained none``, is kept in the run since it cannot be rebuilt).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dgs_sdk.preprocess import PreprocessSpec

from .captions import DEFAULT_CAPTION_TEMPLATE, load_captions
from .checkpoint import (
    atomic_save,
    load_head,
    load_trained_state,
    read_checkpoint,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
    trained_state,
)
from .data import FAKE, REAL, Sample, load_samples
from .dataset import ImageDataset, collate_skipping_unreadable
from .evaluate import metrics_by_generator, predict_samples
from .lora import PROJECTIONS, LoRAConfig
from .methods.dgs import DGSNet
from .methods.lora import LoRAClassifier
from .methods.mirage import MiraGe, MiraGeConfig
from .methods.probe import LinearProbe
from .models import create_clip

__all__ = [
    "METHODS",
    "TrainConfig",
    "TrainError",
    "fit",
    "load_run",
    "build_method",
    "build_optimizer",
    "resolve_device",
]

log = logging.getLogger(__name__)

METHODS = ("probe", "lora", "dgs", "mirage")
BACKBONE_FILE = "backbone.safetensors"
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


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise TrainError(f"device {device!r} is not understood (expected auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {device!r} asked for, but torch sees no CUDA device")
    return resolved


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _build_dgs(config: TrainConfig, clip: nn.Module, probe_head: nn.Linear | None, caption_tokens) -> DGSNet:
    if probe_head is None:
        probe_head = nn.Linear(clip.visual.output_dim, 1)  # filled from the run's probe.safetensors by the caller
    return DGSNet(clip, probe_head, config.lora(), config.help_weight, caption_tokens)


def _build_mirage(config: TrainConfig, clip: nn.Module, probe_head, caption_tokens) -> MiraGe:
    import open_clip

    try:
        return MiraGe(clip, open_clip.get_tokenizer(config.arch), config.mirage())
    except ValueError as e:
        raise TrainError(f"{config.arch}: {e}") from None


# stage -> builder(config, clip, probe_head, caption_tokens); every module built has ``training_loss``,
# ``trainable_parameters`` and ``inference_model``.
STAGE_BUILDERS = {
    "probe": lambda config, clip, probe_head, caption_tokens: LinearProbe(clip.visual, clip.visual.output_dim),
    "lora": lambda config, clip, probe_head, caption_tokens: LoRAClassifier(clip.visual, config.lora()),
    "dgs": _build_dgs,
    "mirage": _build_mirage,
}


def build_method(
    stage: str,
    config: TrainConfig,
    clip: nn.Module,
    probe_head: nn.Linear | None = None,
    caption_tokens: torch.Tensor | None = None,
) -> nn.Module:
    """The module trained in ``stage`` (a method name, or ``probe`` for DGS-Net's first stage)."""
    return STAGE_BUILDERS[stage](config, clip, probe_head, caption_tokens)


def build_optimizer(stage: str, method: nn.Module, config: TrainConfig, steps_per_epoch: int, epochs: int):
    """The optimizer of ``stage`` and its per-step learning-rate schedule (``None`` for a constant rate).

    DGS-Net and its ablations use Adam at a constant rate; MiraGe uses SGD with momentum and weight decay,
    ``warmup_epochs`` at ``warmup_lr``, then cosine annealing to zero over the remaining steps.
    """
    params = method.trainable_parameters()
    if stage != "mirage":
        return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2)), None
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    schedulers = torch.optim.lr_scheduler
    warmup, total = config.warmup_epochs * steps_per_epoch, epochs * steps_per_epoch
    if warmup == 0:
        return optimizer, schedulers.CosineAnnealingLR(optimizer, T_max=total)
    constant = schedulers.ConstantLR(optimizer, factor=config.warmup_lr / config.lr, total_iters=warmup)
    cosine = schedulers.CosineAnnealingLR(optimizer, T_max=total - warmup)
    return optimizer, schedulers.SequentialLR(optimizer, [constant, cosine], milestones=[warmup])


class _MetricsLog:
    def __init__(self, run: Path, tensorboard: bool) -> None:
        self.file = open(run / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard); no TensorBoard log is written")
            else:
                self.writer = SummaryWriter(str(run / "tensorboard"))

    def write(self, record: dict[str, Any], step: int) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _check_classes(samples: list[Sample], root: str) -> None:
    labels = {s.label for s in samples}
    for label, name in ((REAL, "real"), (FAKE, "fake")):
        if label not in labels:
            raise TrainError(f"{root}: no {name} images found; training needs both real and fake images")


def fit(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a run described by ``config`` into ``config.out``; with ``resume``, continue it from its last
    checkpoint (config, data order and optimizer state included). Returns the run folder."""
    run = Path(config.out)
    checkpoint_path = run / "checkpoints" / "last.safetensors"
    position = {"stage": 0, "epoch": 0, "batch": 0, "step": 0}
    resumed: dict[str, torch.Tensor] = {}
    saved: dict[str, str] = {}  # the checkpoint's optimizer groups and schedule
    if resume:
        if not checkpoint_path.exists():
            raise TrainError(f"{run}: no checkpoint to resume from ({checkpoint_path} is missing)")
        resumed, position, saved = read_checkpoint(checkpoint_path)
        if position["stage"] >= len(config.stages()):
            raise TrainError(f"{run}: this run has already finished")
        log.info("resuming %s at stage %d, epoch %d, batch %d", run, position["stage"], position["epoch"],
                 position["batch"])
    elif checkpoint_path.exists():
        raise TrainError(f"{run}: already holds a run; use --resume {run} to continue it, or another --out")

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    samples = load_samples(config.data, config.split)
    _check_classes(samples, config.data)
    val_samples = load_samples(config.val, config.val_split) if config.val else None
    try:
        clip = create_clip(config.arch, config.pretrained, device=str(device))
    except ValueError as e:
        raise TrainError(str(e)) from None
    image_size = clip.visual.image_size
    spec = config.preprocess_spec(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    blocks = len(clip.visual.transformer.resblocks)
    for index in config.lora().blocks or ():
        if not -blocks <= index < blocks:
            raise TrainError(f"--lora-blocks: block {index} does not exist ({config.arch} has {blocks} vision blocks)")

    run.mkdir(parents=True, exist_ok=True)
    (run / "checkpoints").mkdir(exist_ok=True)
    _keep_random_backbone(clip, config, run, resume)
    if not resume:
        record = {
            "config": dataclasses.asdict(config),
            "preprocess": spec.to_dict(),
            "provenance": {
                "data_root": Path(config.data).name,
                "images": len(samples),
                "git_revision": _git_revision(),
                "torch": torch.__version__,
            },
        }
        (run / "config.json").write_text(json.dumps(record, indent=2))

    caption_tokens = None
    if config.method == "dgs":
        import open_clip

        captions = load_captions(samples, config.data, config.captions, config.caption_template)
        caption_tokens = open_clip.get_tokenizer(config.arch)(captions).to(device)

    dataset = ImageDataset(samples, spec, train=True, seed=config.seed, hflip=config.hflip)
    autocast = device.type == "cuda"
    metrics = _MetricsLog(run, config.tensorboard)
    probe_head: nn.Linear | None = None
    try:
        for stage_index, (stage, epochs) in enumerate(config.stages()):
            if stage_index < position["stage"]:
                if stage == "probe":
                    probe_head = load_head(run / "probe.safetensors", clip.visual.output_dim)
                continue
            resuming_here = bool(resumed) and stage_index == position["stage"]
            # A checkpoint at the very start of a stage holds the previous stage's module: this stage starts
            # afresh, from the random state the uninterrupted run had when it built the module.
            at_stage_start = resuming_here and position["epoch"] == 0 and position["batch"] == 0
            if at_stage_start:
                restore_rng(resumed)
            method = build_method(stage, config, clip, probe_head, caption_tokens).to(device)
            steps_per_epoch = math.ceil(math.ceil(len(dataset) / config.batch_size) / config.accumulate)
            optimizer, schedule = build_optimizer(stage, method, config, steps_per_epoch, epochs)
            if resuming_here and not at_stage_start:
                trained = {k: v for k, v in resumed.items() if not k.startswith(("optimizer.", "rng."))}
                load_trained_state(method, trained, str(checkpoint_path))
                restore_optimizer(optimizer, resumed, saved["param_groups"])
                if schedule is not None:
                    schedule.load_state_dict(json.loads(saved["schedule"]))
                restore_rng(resumed)
            start_epoch = position["epoch"] if stage_index == position["stage"] else 0
            for epoch in range(start_epoch, epochs):
                start_batch = position["batch"] if (stage_index, epoch) == (position["stage"], position["epoch"]) else 0
                position = _train_epoch(
                    method, optimizer, schedule, dataset, config, stage, stage_index, epoch, epochs, start_batch,
                    position["step"], device, autocast, metrics, checkpoint_path, progress,
                )
                position = {"stage": stage_index, "epoch": epoch + 1, "batch": 0, "step": position["step"]}
                save_checkpoint(method, optimizer, checkpoint_path, position, schedule)
                if val_samples:
                    scores = _validate(method, val_samples, spec, config, device)
                    metrics.write({"kind": "val", "stage": stage, "epoch": epoch + 1, **scores}, position["step"])
            if stage == "probe" and config.method == "dgs":
                atomic_save(trained_state(method), run / "probe.safetensors")
                probe_head = load_head(run / "probe.safetensors", clip.visual.output_dim)
            position = {"stage": stage_index + 1, "epoch": 0, "batch": 0, "step": position["step"]}
            save_checkpoint(method, optimizer, checkpoint_path, position, schedule)
        atomic_save(trained_state(method), run / "model.safetensors")
    finally:
        metrics.close()
    return run


def _train_epoch(method, optimizer, schedule, dataset, config, stage, stage_index, epoch, epochs, start_batch, step,
                 device, autocast, metrics, checkpoint_path, progress) -> dict[str, int]:
    method.train()
    dataset.set_epoch(epoch)
    order = np.random.default_rng((config.seed, stage_index, epoch)).permutation(len(dataset))
    remaining = order[start_batch * config.batch_size :].tolist()
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=remaining,
        num_workers=config.workers,
        collate_fn=collate_skipping_unreadable,
        pin_memory=device.type == "cuda",
        # Worker seeds come from this generator, not the global one, so a resumed run draws the same dropout.
        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + stage_index * 1_009 + epoch),
    )
    batches_total = -(-len(dataset) // config.batch_size)
    bar = tqdm(total=batches_total, initial=start_batch, desc=f"{stage} {epoch + 1}/{epochs}", unit="batch",
               disable=not progress, dynamic_ncols=True)
    batch_index, skipped, started = start_batch, 0, time.perf_counter()
    seen = 0
    optimizer.zero_grad(set_to_none=True)
    with bar:
        for micro, batch in enumerate(loader, start=1):
            batch_index += 1
            skipped += batch["skipped"]
            if "image" in batch:
                images, labels = batch["image"].to(device), batch["label"].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss, logs = method.training_loss(images, labels, batch["index"].to(device))
                (loss / config.accumulate).backward()
                seen += len(images)
            if micro % config.accumulate == 0 or batch_index == batches_total:
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if schedule is not None:
                    schedule.step()
                step += 1
                rate = seen / max(time.perf_counter() - started, 1e-9)
                if "image" in batch:
                    metrics.write({"kind": "train", "stage": stage, "epoch": epoch, "step": step, **logs,
                                   "lr": lr, "images_per_s": rate}, step)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{rate:.1f}")
                if config.save_every and step % config.save_every == 0:
                    save_checkpoint(method, optimizer, checkpoint_path,
                                    {"stage": stage_index, "epoch": epoch, "batch": batch_index, "step": step},
                                    schedule)
            bar.update(1)
    if skipped:
        log.warning("%s epoch %d: %d unreadable images were skipped", stage, epoch + 1, skipped)
    return {"stage": stage_index, "epoch": epoch, "batch": batch_index, "step": step}


def _validate(method, samples, spec, config, device) -> dict[str, Any]:
    probabilities, _ = predict_samples(method, samples, spec, config.batch_size, device, config.workers)
    return {"mean": metrics_by_generator(samples, probabilities, 0.5)["mean"]}


def _keep_random_backbone(clip: nn.Module, config: TrainConfig, run: Path, resume: bool) -> None:
    """A randomly initialised backbone (``--pretrained none``) cannot be rebuilt from its name: the run keeps it
    in ``backbone.safetensors`` and every later load (resume, eval, export) reads it back."""
    if str(config.pretrained).lower() != "none":
        return
    path = run / BACKBONE_FILE
    if resume:
        clip.load_state_dict(load_file(str(path), device=str(next(clip.parameters()).device)))
    else:
        atomic_save({k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}, path)


def load_run(run: str | os.PathLike, device: str = "cpu") -> tuple[TrainConfig, PreprocessSpec, nn.Module, dict]:
    """A finished run's config, preprocessing spec, trained network (logit of "fake") and config.json record.

    Raises:
        TrainError: the folder is not a finished run.
    """
    run = Path(run)
    for needed in ("config.json", "model.safetensors"):
        if not (run / needed).exists():
            raise TrainError(f"{run}: not a finished training run ({needed} is missing)")
    record = json.loads((run / "config.json").read_text())
    config = TrainConfig(**record["config"])
    spec = PreprocessSpec.from_dict(record["preprocess"])
    clip = create_clip(config.arch, config.pretrained, device=device)
    _keep_random_backbone(clip, config, run, resume=True)
    stage = config.stages()[-1][0]
    probe_head = load_head(run / "probe.safetensors", clip.visual.output_dim) if stage == "dgs" else None
    method = build_method(stage, config, clip, probe_head)
    load_trained_state(method, load_file(str(run / "model.safetensors")), str(run / "model.safetensors"))
    return config, spec, method.to(device).eval(), record
