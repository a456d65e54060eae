"""Training runs: a run folder with the resolved config, safetensors checkpoints, metrics and resumption.

The run folder's layout and its files belong to `dgs_trainer.run_folder`. Only trained tensors are stored; the
frozen backbone comes from ``arch`` and ``pretrained`` again (a random one, ``--pretrained none``, is kept in the
run since it cannot be rebuilt).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dgs_sdk.preprocess import PreprocessSpec

from .captions import load_captions
from .checkpoint import (
    atomic_save,
    load_head,
    load_trained_state,
    restore_optimizer,
    restore_rng,
    restore_schedule,
    save_checkpoint,
    trained_state,
)
from .config import METHODS, TrainConfig, TrainError
from .data import FAKE, REAL, Sample, load_samples
from .dataset import ImageDataset, ImageUsage, collate_skipping_unreadable
from .evaluate import metrics_by_generator, predict_samples
from .methods.dgs import DGSNet
from .methods.lora import LoRAClassifier
from .methods.mirage import MiraGe
from .methods.probe import LinearProbe
from .models import create_clip
from .run_folder import MetricsLog, RunFolder, RunFolderError, read_tensors

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


def _check_classes(samples: list[Sample], root: str) -> None:
    labels = {s.label for s in samples}
    for label, name in ((REAL, "real"), (FAKE, "fake")):
        if label not in labels:
            raise TrainError(f"{root}: no {name} images found; training needs both real and fake images")


def fit(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a run described by ``config`` into ``config.out``; with ``resume``, continue it from its last
    checkpoint (config, data order and optimizer state included). Returns the run folder.

    Raises:
        TrainError: the run cannot start or continue, e.g. an epoch that ran from its first batch could read no
            real or no fake image (checked before that epoch's checkpoint, so no model is written).
        RunFolderError: on resume, a file of the run is missing or damaged; the message names it.
    """
    run = RunFolder(config.out)
    checkpoint_path = run.checkpoint_file
    position = {"stage": 0, "epoch": 0, "batch": 0, "step": 0}
    resumed: dict[str, torch.Tensor] = {}
    saved: dict[str, str] = {}  # the checkpoint's optimizer groups and schedule
    if resume:
        if not checkpoint_path.exists():
            raise TrainError(f"{run}: no checkpoint to resume from ({checkpoint_path} is missing)")
        resumed, position, saved = run.read_checkpoint()
        stages = config.stages()
        if position["stage"] > len(stages) or (
            position["stage"] < len(stages) and position["epoch"] > stages[position["stage"]][1]
        ):
            raise RunFolderError(f"{checkpoint_path}: its position (stage {position['stage']}, epoch "
                                 f"{position['epoch']}) lies past the run's stages {stages}; the checkpoint is damaged")
        if position["stage"] == len(stages):
            raise TrainError(f"{run}: this run has already finished")
        log.info("resuming %s at stage %d, epoch %d, batch %d", run, position["stage"], position["epoch"],
                 position["batch"])
    elif checkpoint_path.exists():
        raise TrainError(f"{run}: already holds a run; use --resume {run} to continue it, or another --out")

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    samples = load_samples(config.data, config.split)
    _check_classes(samples, config.data)
    if position["batch"] > math.ceil(len(samples) / config.batch_size):
        raise RunFolderError(f"{checkpoint_path}: its position (batch {position['batch']}) lies past the "
                             f"{math.ceil(len(samples) / config.batch_size)} batches of {config.data}; the checkpoint "
                             "is damaged or the data changed")
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

    run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
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
        run.write_record(record)

    caption_tokens = None
    if config.method == "dgs":
        import open_clip

        captions = load_captions(samples, config.data, config.captions, config.caption_template)
        caption_tokens = open_clip.get_tokenizer(config.arch)(captions).to(device)

    dataset = ImageDataset(samples, spec, train=True, seed=config.seed, hflip=config.hflip)
    autocast = device.type == "cuda"
    metrics = MetricsLog(run, config.tensorboard, resume_step=position["step"] if resume else None)
    probe_head: nn.Linear | None = None
    try:
        for stage_index, (stage, epochs) in enumerate(config.stages()):
            if stage_index < position["stage"]:
                if stage == "probe":
                    probe_head = load_head(run.probe_file, clip.visual.output_dim)
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
                restore_optimizer(optimizer, resumed, saved["param_groups"], str(checkpoint_path))
                if schedule is not None:
                    restore_schedule(schedule, saved, str(checkpoint_path))
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
                    metrics.write({"kind": "val", "stage": stage, "epoch": epoch + 1, "step": position["step"],
                                   **scores}, position["step"])
            if stage == "probe" and config.method == "dgs":
                atomic_save(trained_state(method), run.probe_file)
                probe_head = load_head(run.probe_file, clip.visual.output_dim)
            position = {"stage": stage_index + 1, "epoch": 0, "batch": 0, "step": position["step"]}
            save_checkpoint(method, optimizer, checkpoint_path, position, schedule)
        atomic_save(trained_state(method), run.model_file)
    finally:
        metrics.close()
    return run.path


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
    batch_index, started = start_batch, time.perf_counter()
    seen = 0
    usage = ImageUsage()
    optimizer.zero_grad(set_to_none=True)
    with bar:
        for micro, batch in enumerate(loader, start=1):
            batch_index += 1
            usage.add(batch)
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
    if usage.skipped:
        log.warning("%s epoch %d: %d unreadable images were skipped (e.g. %s)", stage, epoch + 1, usage.skipped,
                    usage.example)
    if start_batch == 0:  # a resumed epoch saw only part of the data: its counts prove nothing
        _check_usable(usage, config.data, f"{stage} epoch {epoch + 1}")
    return {"stage": stage_index, "epoch": epoch, "batch": batch_index, "step": step}


def _check_usable(usage: ImageUsage, root: str, when: str) -> None:
    """A whole epoch without a real or a fake image trains a detector of nothing: stop before it is saved."""
    absent = [name for label, name in ((REAL, "real"), (FAKE, "fake")) if usage.used[label] == 0]
    if absent:
        what = "no image" if len(absent) == 2 else f"no {absent[0]} image"
        raise TrainError(
            f"{root}: {what} could be read in {when} ({usage.used[REAL]} real and {usage.used[FAKE]} fake used, "
            f"{usage.skipped_by_label[REAL]} real and {usage.skipped_by_label[FAKE]} fake unreadable, e.g. "
            f"{usage.example}); training needs both real and fake images, no model was written"
        )


def _validate(method, samples, spec, config, device) -> dict[str, Any]:
    probabilities, _ = predict_samples(method, samples, spec, config.batch_size, device, config.workers)
    return {"mean": metrics_by_generator(samples, probabilities, 0.5)["mean"]}


def _keep_random_backbone(clip: nn.Module, config: TrainConfig, run: RunFolder, resume: bool) -> None:
    """A randomly initialised backbone (``--pretrained none``) cannot be rebuilt from its name: the run keeps it
    in ``backbone.safetensors`` and every later load (resume, eval, export) reads it back."""
    if str(config.pretrained).lower() != "none":
        return
    if resume:
        clip.load_state_dict(read_tensors(run.backbone_file, expected=clip.state_dict()))
    else:
        atomic_save({k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}, run.backbone_file)


def load_run(run: str | os.PathLike, device: str = "cpu") -> tuple[TrainConfig, PreprocessSpec, nn.Module, dict]:
    """A finished run's config, preprocessing spec, trained network (logit of "fake") and config.json record.

    Raises:
        RunFolderError: the folder is not a finished run, or one of its files is damaged (the message names it).
    """
    run = RunFolder(run)
    run.check_finished()
    record = run.read_record()
    config = run.read_config()
    spec = run.read_preprocess()
    try:
        clip = create_clip(config.arch, config.pretrained, device=device)
    except ValueError as e:
        raise RunFolderError(f"{run.config_file}: {e}") from None
    _keep_random_backbone(clip, config, run, resume=True)
    stage = config.stages()[-1][0]
    probe_head = load_head(run.probe_file, clip.visual.output_dim) if stage == "dgs" else None
    method = build_method(stage, config, clip, probe_head)
    load_trained_state(method, read_tensors(run.model_file), str(run.model_file))
    return config, spec, method.to(device).eval(), record
