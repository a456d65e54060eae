"""What every training method provides, and the small pieces methods share.

A method (`methods/<name>.py`) is one unit: its options dataclass with the published defaults, its stages, the
module each stage trains (with its loss and trainable parameters), the optimizer of each stage, what a finished
stage leaves in the run folder, the inference network to export and how it describes itself in a model package.
The training loop, the exporter and the CLI know methods only through `Method` and the registry in
`dgs_trainer.methods`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from dgs_sdk.preprocess import PreprocessSpec

__all__ = ["AdamOptions", "Method", "MethodContext", "Stage", "TrainableModule", "help_of"]


def help_of(text: str, **metadata: Any) -> dict[str, Any]:
    """Field metadata holding the ``--help`` line of an option: options are documented where they are declared."""
    return {"help": text, **metadata}


@dataclass(frozen=True)
class Stage:
    """One stage of a method: the module it trains and for how many epochs."""

    name: str
    epochs: int


@dataclass
class MethodContext:
    """What a method builds its modules from.

    Attributes:
        clip: the open_clip model of the run's ``arch`` and ``pretrained`` (frozen parts are shared with it).
        arch: its open_clip name (the tokenizer is looked up by it).
        probe_file: where DGS-Net's first stage keeps its probe head in the run folder.
        samples: the training samples, in dataset order; None when a finished run is loaded for inference.
        data_root: the training data root (caption keys may be relative to it).
    """

    clip: nn.Module
    arch: str
    probe_file: Path
    samples: Sequence[Any] | None = None
    data_root: str | os.PathLike | None = None


class TrainableModule(Protocol):
    """The module a stage trains (an `nn.Module`)."""

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        """``(loss, logs)`` of a batch; ``indices`` are the samples' positions in the training set."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates."""

    def inference_model(self) -> nn.Module:
        """The deployable network: image ``[B, 3, S, S]`` -> logit of "fake" ``[B]``."""


class Method:
    """A training method: subclasses set the class attributes, ``build`` and ``describe``, and override the rest
    where they differ. ``options`` is an instance of ``options_type`` (the method's settings).

    The defaults: one stage, named after the method, of ``options.epochs`` epochs, trained with ``options.adam``
    (`AdamOptions`); nothing to prepare, nothing to keep between stages.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    options_type: ClassVar[type]
    preprocess: ClassVar[str]  # default transform of the model input
    small_images: ClassVar[str]  # default policy for images too small for patch-select

    def __init__(self, options: Any) -> None:
        self.options = options

    def stages(self) -> list[Stage]:
        """The stages in training order; the last one trains the module that is exported."""
        return [Stage(self.name, self.options.epochs)]

    def input_spec(self) -> PreprocessSpec | None:
        """The preprocessing the method's inputs must have (a distilled student's: its teacher's), or None when the
        run's own settings decide."""
        return None

    def prepare(self, context: MethodContext) -> None:
        """Read what training needs besides images (DGS-Net's captions) before any stage runs, so that a missing
        file stops the run at its start; called with the training samples in ``context``."""

    def build(self, stage: str, context: MethodContext) -> nn.Module:
        """The `TrainableModule` of ``stage``, freshly initialised."""
        raise NotImplementedError

    def optimizer(self, stage: str, module: nn.Module, steps_per_epoch: int, epochs: int):
        """The optimizer of ``stage`` and its per-step learning-rate schedule (None for a constant rate)."""
        return self.options.adam(module)

    def stage_finished(self, stage: str, module: nn.Module, context: MethodContext) -> None:
        """Keep what later stages need (DGS-Net's probe head) once ``stage`` has trained."""

    def provenance(self) -> dict[str, Any]:
        """What the run's record keeps of inputs besides the data (a distillation's teacher), once `prepare` ran."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The method's entries in a model package's ``architecture``."""
        raise NotImplementedError


@dataclass(frozen=True)
class AdamOptions:
    """Adam at a constant learning rate, as DGS-Net trains each of its stages."""

    epochs: int = field(default=1, metadata=help_of("Epochs of the method's own stage."))
    lr: float = field(default=1e-4, metadata=help_of("Learning rate."))
    beta1: float = field(default=0.9, metadata=help_of("Adam beta1."))
    beta2: float = field(default=0.999, metadata=help_of("Adam beta2."))

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam betas must be in [0, 1), got {self.beta1} and {self.beta2}")

    def adam(self, module: nn.Module) -> tuple[torch.optim.Optimizer, None]:
        """Adam over the module's trainable parameters, at a constant rate (no schedule)."""
        return torch.optim.Adam(module.trainable_parameters(), lr=self.lr, betas=(self.beta1, self.beta2)), None
