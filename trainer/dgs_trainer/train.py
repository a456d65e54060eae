"""The training loop: a method's stages, epoch by epoch, into a run folder, with checkpoints and resumption.

What is trained belongs to the method (`dgs_trainer.methods`), where files go to the run folder
(`dgs_trainer.run_folder`); this module runs the epochs. Only trained tensors are stored; the frozen backbone comes
from ``arch`` and ``pretrained`` again (a random one, ``--pretrained none``, is kept in the run since it cannot be
rebuilt).
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dgs_sdk.data import FAKE, REAL, Sample, load_samples
from dgs_sdk.metrics import metrics_by_generator

from .checkpoint import Position, load_trained_state, restore_optimizer, restore_rng, restore_schedule, save_checkpoint
from .config import TrainConfig
from .dataset import ImageDataset, ImageUsage, collate_skipping_unreadable
from .errors import RunFolderError, TrainError
from .evaluate import predict_samples
from .methods import MethodContext
from .run_folder import MetricsLog, RunFolder

__all__ = ["TrainConfig", "TrainError", "fit", "resolve_device"]

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


def _check_classes(samples: list[Sample], root: str) -> None:
    labels = {s.label for s in samples}
    for label, name in ((REAL, "real"), (FAKE, "fake")):
        if label not in labels:
            raise TrainError(f"{root}: no {name} images found; training needs both real and fake images")


def _required_spec(spec, required):
    """The method's required preprocessing (a teacher's), once the run's own agrees with it in every setting but the
    normalisation (which the method's takes)."""
    def shown(s) -> str:
        small = f", small images {s.small_images}" if s.transform == "patch-select" else ""
        return f"{s.transform} at {s.size} px{small}"

    same = (spec.transform, spec.size, spec.small_images, spec.patch_size) == (
        required.transform, required.size, required.small_images, required.patch_size)
    if not same:
        raise TrainError(f"the teacher takes {shown(required)}; this run would feed {shown(spec)} (set --preprocess, "
                         "--small-images and --image-size to the teacher's, as dgs distill does)")
    return required


def _check_same_inputs(run: RunFolder, provenance: dict[str, Any]) -> None:
    """A resumed run must go on with the inputs it started with (a distillation's teacher): refuse one that changed."""
    recorded = run.read_record().get("provenance", {})
    for key, value in provenance.items():
        if key in recorded and recorded[key] != value:
            raise TrainError(f"{run}: its {key} is not the one it started with ({recorded[key]} then, {value} now); "
                             "resume with the same one, or start a new run")


def _resume_position(run: RunFolder, config: TrainConfig) -> tuple[dict[str, torch.Tensor], Position, dict[str, str]]:
    if not run.checkpoint_file.exists():
        raise TrainError(f"{run}: no checkpoint to resume from ({run.checkpoint_file} is missing)")
    if run.is_legacy():
        raise TrainError(f"{run}: was written by an earlier version of dgs, whose settings differ; it can be "
                         "evaluated and exported, but not resumed (train it again)")
    resumed, position, saved = run.read_checkpoint()
    stages = config.stages()
    past_epochs = position.stage < len(stages) and position.epoch > stages[position.stage].epochs
    if position.stage > len(stages) or past_epochs:
        raise RunFolderError(f"{run.checkpoint_file}: its position (stage {position.stage}, epoch {position.epoch}) "
                             f"lies past the run's stages {stages}; the checkpoint is damaged")
    if position.stage == len(stages):
        raise TrainError(f"{run}: this run has already finished")
    log.info("resuming %s at stage %d, epoch %d, batch %d", run, position.stage, position.epoch, position.batch)
    return resumed, position, saved


def fit(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a run described by ``config`` into ``config.out``; with ``resume``, continue it from its last
    checkpoint (config, data order and optimizer state included). Returns the run folder.

    Raises:
        TrainError: the run cannot start or continue, e.g. an epoch that ran from its first batch could read no
            real or no fake image (checked before that epoch's checkpoint, so no model is written).
        RunFolderError: on resume, a file of the run is missing or damaged; the message names it.
    """
    run = RunFolder(config.out)
    position, resumed, saved = Position(), {}, {}  # saved: the checkpoint's optimizer groups and schedule
    if resume:
        resumed, position, saved = _resume_position(run, config)
    elif run.checkpoint_file.exists():
        raise TrainError(f"{run}: already holds a run; use --resume {run} to continue it, or another --out")

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    samples = load_samples(config.data, config.split)
    _check_classes(samples, config.data)
    batches = math.ceil(len(samples) / config.batch_size)
    if position.batch > batches:
        raise RunFolderError(f"{run.checkpoint_file}: its position (batch {position.batch}) lies past the {batches} "
                             f"batches of {config.data}; the checkpoint is damaged or the data changed")
    val_samples = load_samples(config.val, config.val_split) if config.val else None
    method = config.method_runner()
    clip = run.create_backbone(config, device, saved=resume)
    image_size = clip.visual.image_size
    spec = config.preprocess_spec(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    required = method.input_spec()
    if required is not None:
        spec = _required_spec(spec, required)
    context = MethodContext(clip, config.arch, run.probe_file, samples, config.data)
    method.prepare(context)  # captions and other inputs are checked before anything is written
    run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        run.keep_backbone(config, clip)
        run.write_record(config, spec, {
            "data_root": Path(config.data).name,
            "images": len(samples),
            "git_revision": _git_revision(),
            "torch": torch.__version__,
            **method.provenance(),
        })
    else:
        _check_same_inputs(run, method.provenance())

    dataset = ImageDataset(samples, spec, train=True, seed=config.seed, hflip=config.hflip,
                           degradation=config.degradation())
    autocast = device.type == "cuda"
    metrics = MetricsLog(run, config.tensorboard, resume_step=position.step if resume else None)
    try:
        for stage_index, stage in enumerate(method.stages()):
            if stage_index < position.stage:
                continue
            resuming_here = bool(resumed) and stage_index == position.stage
            # A checkpoint at the very start of a stage holds the previous stage's module: this stage starts
            # afresh, from the random state the uninterrupted run had when it built the module.
            at_stage_start = resuming_here and position.epoch == 0 and position.batch == 0
            if at_stage_start:
                restore_rng(resumed)
            module = method.build(stage.name, context).to(device)
            steps_per_epoch = math.ceil(batches / config.accumulate)
            optimizer, schedule = method.optimizer(stage.name, module, steps_per_epoch, stage.epochs)
            if resuming_here and not at_stage_start:
                trained = {k: v for k, v in resumed.items() if not k.startswith(("optimizer.", "rng."))}
                load_trained_state(module, trained, str(run.checkpoint_file))
                restore_optimizer(optimizer, resumed, saved["param_groups"], str(run.checkpoint_file))
                if schedule is not None:
                    restore_schedule(schedule, saved, str(run.checkpoint_file))
                restore_rng(resumed)
            start_epoch = position.epoch if stage_index == position.stage else 0
            for epoch in range(start_epoch, stage.epochs):
                start = position if (stage_index, epoch) == (position.stage, position.epoch) else Position(
                    stage_index, epoch, 0, position.step)
                position = _train_epoch(module, optimizer, schedule, dataset, config, stage.name, stage.epochs, start,
                                        device, autocast, metrics, run.checkpoint_file, progress)
                position = position.next_epoch(stage_index, epoch)
                save_checkpoint(module, optimizer, run.checkpoint_file, position, schedule)
                if val_samples:
                    scores = _validate(module, val_samples, spec, config, device)
                    metrics.write({"kind": "val", "stage": stage.name, "epoch": epoch + 1, "step": position.step,
                                   **scores}, position.step)
            method.stage_finished(stage.name, module, context)
            position = position.next_stage(stage_index)
            save_checkpoint(module, optimizer, run.checkpoint_file, position, schedule)
        run.save_model(module)
    finally:
        metrics.close()
    return run.path


def _train_epoch(method, optimizer, schedule, dataset, config, stage, epochs, start: Position, device, autocast,
                 metrics, checkpoint_path, progress) -> Position:
    """Train ``start.epoch`` of stage ``start.stage`` from batch ``start.batch``; returns where it ended."""
    stage_index, epoch, start_batch, step = start.stage, start.epoch, start.batch, start.step
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
                    save_checkpoint(method, optimizer, checkpoint_path, Position(stage_index, epoch, batch_index, step),
                                    schedule)
            bar.update(1)
    if usage.skipped:
        log.warning("%s epoch %d: %d unreadable images were skipped (e.g. %s)", stage, epoch + 1, usage.skipped,
                    usage.example)
    if start_batch == 0:  # a resumed epoch saw only part of the data: its counts prove nothing
        _check_usable(usage, config.data, f"{stage} epoch {epoch + 1}")
    return Position(stage_index, epoch, batch_index, step)


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
