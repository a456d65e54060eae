"""Knowledge distillation: a trained detector (the teacher) taught to a smaller student, an open_clip image tower
(or a timm backbone through open_clip's timm towers) and a linear head, fully fine-tuned.

The loss of a batch, with student logits ``s``, teacher logits ``t``, labels ``y`` and temperature ``T``::

    hard_weight * BCE(s, y)
  + soft_weight * T^2 * KL(Bernoulli(sigmoid(t / T)) || Bernoulli(sigmoid(s / T)))
  + feature_weight * (1 - cos(P f_s, f_t))

The soft term is Hinton et al.'s soft-target loss for a two-class output (the ``T^2`` keeps its gradient on the
scale of the hard term as ``T`` changes). The last term matches the student's image embedding ``f_s``, through a
learned projection ``P`` when the widths differ, to the teacher's ``f_t``; it needs a run folder as teacher (a
package gives logits only). The teacher sees exactly the student's input (same augmentation), frozen, in
inference mode; its outputs are cached on disk (`dgs_trainer.teacher_cache`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dgs_sdk.preprocess import PreprocessSpec

from ..errors import TrainError
from ..models import ClipImageDetector, image_embedding_width
from ..teacher import Teacher, open_teacher, teacher_spec
from ..teacher_cache import TeacherCache, cache_file, input_keys
from .base import AdamOptions, Method, MethodContext, help_of

__all__ = ["DistillConfig", "DistillLoss", "DistillMethod", "DistilledStudent", "distillation_loss"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillLoss:
    """The weights of the three loss terms and the soft targets' temperature."""

    hard_weight: float = field(default=0.5, metadata=help_of("Distillation: weight of BCE on the labels."))
    soft_weight: float = field(default=0.5, metadata=help_of(
        "Distillation: weight of the soft-target term on the teacher's logits (T^2 * KL)."))
    temperature: float = field(default=2.0, metadata=help_of("Distillation: temperature T of the soft targets."))
    feature_weight: float = field(default=0.0, metadata=help_of(
        "Distillation: weight of matching the teacher's image embedding (1 - cosine, through a learned projection "
        "when widths differ); needs a run folder as teacher."))

    def __post_init__(self) -> None:
        for name in ("hard_weight", "soft_weight", "feature_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if self.hard_weight + self.soft_weight + self.feature_weight == 0:
            raise ValueError("at least one of hard_weight, soft_weight and feature_weight must be positive")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be positive, got {self.temperature}")


@dataclass(frozen=True)
class DistillConfig(AdamOptions):
    """Distillation's settings: AdamW with a cosine schedule, every student weight trained."""

    epochs: int = field(default=5, metadata=help_of("Epochs of the method's own stage."))
    head_lr: float = field(default=1e-3, metadata=help_of(
        "Distillation: learning rate of the student's new linear head (and feature projection): a fresh head on a "
        "pretrained tower learns at a higher rate than the tower is fine-tuned."))
    weight_decay: float = field(default=0.05, metadata=help_of("Distillation: AdamW weight decay."))
    teacher: str = field(default="", metadata=help_of(
        "Distillation: the teacher, a finished run folder or a .dgs model package (dgs distill takes it as "
        "argument)."))
    kd: DistillLoss = field(default_factory=DistillLoss)
    init_from_teacher: bool = field(default=False, metadata=help_of(
        "Distillation: start the student from the teacher's own trained encoder, block i of n taken from block "
        "i*N/n of the teacher's N (DistilBERT's initialisation); the student must be the teacher's architecture with "
        "fewer blocks (same width and patch size), and the teacher a run folder."))
    teacher_cache: bool = field(default=True, metadata=help_of(
        "Distillation: keep the teacher's outputs on disk (in the dgs cache folder), so that a resumed or repeated "
        "run does not compute them again."))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.head_lr > 0:
            raise ValueError(f"head_lr must be positive, got {self.head_lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay cannot be negative, got {self.weight_decay}")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, loss: DistillLoss,
                      student_features: torch.Tensor | None = None, teacher_features: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a batch (see the module docstring) and its terms for the log."""
    s, t = student.float(), teacher.float()
    hard = F.binary_cross_entropy_with_logits(s, labels)
    target = torch.sigmoid(t / loss.temperature)
    # BCE against soft targets minus the targets' own entropy is the KL divergence (zero when s equals t).
    entropy = F.binary_cross_entropy_with_logits(t / loss.temperature, target)
    soft = loss.temperature**2 * (F.binary_cross_entropy_with_logits(s / loss.temperature, target) - entropy)
    total = loss.hard_weight * hard + loss.soft_weight * soft
    logs = {"hard": hard.item(), "soft": soft.item(), "agreement": ((s > 0) == (t > 0)).float().mean().item()}
    if student_features is not None and teacher_features is not None:
        feature = 1 - F.cosine_similarity(student_features.float(), teacher_features.float(), dim=-1).mean()
        total = total + loss.feature_weight * feature
        logs["feature"] = feature.item()
    logs["loss"] = total.item()
    return total, logs


class _TeacherLink:
    """The teacher and its cache, held outside the student's modules: never trained, saved or moved with it."""

    def __init__(self, teacher: Teacher, use_cache: bool, features: bool) -> None:
        self.teacher = teacher
        self.use_cache = use_cache
        self.features = features
        self.cache: TeacherCache | None = None

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits (and embeddings) of a batch, from the cache where it has them."""
        if not self.use_cache:
            return self.teacher.outputs(images, self.features)
        if self.cache is None:
            self.cache = TeacherCache(cache_file(self.teacher.checksum, self.teacher.spec,
                                                 self.teacher.compute(images.device)))
        keys = input_keys(images)
        logits, embeddings = self.cache.lookup(keys, self.teacher.feature_width if self.features else None)
        missing = [i for i, logit in enumerate(logits) if logit is None]
        if missing:
            computed, computed_features = self.teacher.outputs(images[missing], self.features)
            self.cache.store([keys[i] for i in missing], computed, computed_features)
            for row, i in enumerate(missing):
                logits[i] = computed[row].item()
                if computed_features is not None:
                    # Rounded as the cache keeps it, so that a resumed or repeated run sees the same embedding.
                    embeddings[i] = computed_features[row].cpu().numpy().astype(np.float16).astype(np.float32)
        logit_tensor = torch.tensor(logits, dtype=torch.float32, device=images.device)
        feature_tensor = (torch.from_numpy(np.stack(embeddings)).to(images.device) if self.features else None)
        return logit_tensor, feature_tensor


class DistilledStudent(nn.Module):
    """A student image tower and linear head, every weight trained, taught by a frozen teacher.

    ``feature_proj`` exists while training with feature matching: it maps the student's embedding onto the
    teacher's width (the identity when they agree) and is dropped when training ends, never exported.
    """

    def __init__(self, tower: nn.Module, loss: DistillLoss, teacher: _TeacherLink | None = None,
                 teacher_width: int | None = None) -> None:
        super().__init__()
        self.tower = tower.requires_grad_(True)
        width = image_embedding_width(tower)
        self.head = nn.Linear(width, 1)
        self.loss = loss
        self.link = teacher
        self.feature_proj: nn.Module | None = None
        if teacher_width is not None:
            self.feature_proj = nn.Identity() if teacher_width == width else nn.Linear(width, teacher_width)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(images)).squeeze(-1)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        if self.link is None:
            raise TrainError("this student was loaded without its teacher: it can be evaluated and exported only")
        teacher_logits, teacher_features = self.link.outputs(images)
        features = self.tower(images)
        logits = self.head(features).squeeze(-1)
        projected = self.feature_proj(features) if self.feature_proj is not None else None
        return distillation_loss(logits, teacher_logits, labels, self.loss, projected, teacher_features)

    def inference_model(self) -> ClipImageDetector:
        return ClipImageDetector.from_parts(self.tower, self.head)


BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def teacher_blocks(teacher: Teacher, tower: nn.Module) -> dict[str, torch.Tensor]:
    """The student ``tower``'s state taken from the teacher's encoder: every tensor outside the blocks as it is,
    student block ``i`` of ``n`` from teacher block ``i * N // n`` of ``N`` (every other block when N = 2n).

    Raises:
        TrainError: the teacher is not a run, or the student is not its architecture with as many blocks or fewer.
    """
    encoder = getattr(getattr(teacher, "network", None), "visual", None)
    if not isinstance(encoder, nn.Module):
        raise TrainError(f"teacher {teacher.path}: --init-from-teacher needs a run folder whose network has a CLIP "
                         "image encoder (a package holds an ONNX graph)")
    source, target = encoder.state_dict(), tower.state_dict()

    def blocks(state) -> int:
        return len({int(m.group(1)) for k in state if (m := BLOCK.match(k))})

    teacher_n, student_n = blocks(source), blocks(target)
    if not 0 < student_n <= teacher_n:
        raise TrainError(f"--init-from-teacher: the student has {student_n} transformer blocks and the teacher "
                         f"{teacher_n}; it needs a student of the teacher's architecture with fewer blocks")
    state = {}
    for key, value in target.items():
        m = BLOCK.match(key)
        name = f"transformer.resblocks.{int(m.group(1)) * teacher_n // student_n}.{m.group(2)}" if m else key
        if name not in source or source[name].shape != value.shape:
            raise TrainError(f"--init-from-teacher: the student's {key} {tuple(value.shape)} has no counterpart in "
                             f"the teacher's encoder ({teacher.path}); the student must be the teacher's architecture "
                             "with fewer blocks")
        state[key] = source[name].detach().clone()
    return state


class DistillMethod(Method):
    """Distillation of a trained detector (run folder or .dgs) into a smaller open_clip or timm student."""

    name = "distill"
    summary = "distil a trained detector (run or .dgs) into a smaller student"
    options_type = DistillConfig
    preprocess = "patch-select"
    small_images = "pad"

    def __init__(self, options: DistillConfig) -> None:
        super().__init__(options)
        self.teacher: Teacher | None = None

    def input_spec(self) -> PreprocessSpec:
        """The teacher's preprocessing, which the student must be fed."""
        if not self.options.teacher:
            raise TrainError("distillation needs a teacher: dgs distill TEACHER (a run folder or a .dgs package)")
        return teacher_spec(self.options.teacher)

    def prepare(self, context: MethodContext) -> None:
        """Open the teacher (fit has read its spec with `input_spec`), and with ``init_from_teacher`` start the
        student's tower from the teacher's blocks (a resumed run then loads its checkpoint over them)."""
        self.teacher = open_teacher(self.options.teacher)
        if self.options.kd.feature_weight > 0 and self.teacher.feature_width is None:
            raise TrainError(f"teacher {self.teacher.path}: feature matching needs the image embedding of a run's "
                             "CLIP-and-head network; this teacher gives logits only (use --kd-feature-weight 0)")
        if self.options.init_from_teacher:
            tower = context.clip.visual
            with torch.no_grad():
                tower.load_state_dict(teacher_blocks(self.teacher, tower))

    def provenance(self) -> dict[str, Any]:
        return {"teacher": self.teacher.describe()} if self.teacher is not None else {}

    def build(self, stage: str, context: MethodContext) -> DistilledStudent:
        if context.samples is None or self.teacher is None:  # a finished run, loaded for inference
            return DistilledStudent(context.clip.visual, self.options.kd)
        matching = self.options.kd.feature_weight > 0
        link = _TeacherLink(self.teacher, self.options.teacher_cache, matching)
        return DistilledStudent(context.clip.visual, self.options.kd, link,
                                self.teacher.feature_width if matching else None)

    def optimizer(self, stage: str, module: nn.Module, steps_per_epoch: int, epochs: int):
        """AdamW over every student weight (the tower at ``lr``, the new head and projection at ``head_lr``), the
        rates cosine-annealed to zero over the stage."""
        options = self.options
        tower = list(module.tower.parameters())
        in_tower = {id(p) for p in tower}
        new = [p for p in module.trainable_parameters() if id(p) not in in_tower]
        optimizer = torch.optim.AdamW([{"params": tower, "lr": options.lr}, {"params": new, "lr": options.head_lr}],
                                      betas=(options.beta1, options.beta2), weight_decay=options.weight_decay)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * epochs)

    def stage_finished(self, stage: str, module: nn.Module, context: MethodContext) -> None:
        module.feature_proj = None  # a training aid: not part of the detector
        if module.link is not None:
            cache = module.link.cache
            if cache is not None:
                total = cache.hits + cache.misses
                if total:
                    log.info("teacher outputs: %d of %d from the cache (%s)", cache.hits, total, cache.path)
                cache.close()

    def describe(self) -> dict[str, Any]:
        return {"head": "linear", "lora_merged": False, "distilled": True,
                "init_from_teacher": self.options.init_from_teacher}
