"""Run checkpoints: trained tensors, optimizer state and position in safetensors files, written atomically.

Only what a run trains is stored (LoRA factors and linear heads); the frozen backbone is rebuilt from the
run's ``arch`` and ``pretrained``. safetensors holds flat tensors, so the optimizer state is flattened into
``optimizer.<param index>.<slot>`` tensors and its parameter groups go into the file's metadata as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import RunFolderError
from .tensor_files import atomic_save, check_tensors, read_tensors

__all__ = [
    "TRAINED_MODULES",
    "CheckpointError",
    "Position",
    "trained_state",
    "load_trained_state",
    "atomic_save",
    "save_checkpoint",
    "restore_optimizer",
    "restore_schedule",
    "restore_rng",
    "load_head",
]

# Top-level submodules whose every tensor a run trains or accumulates (heads, MiraGe's prompts and memory bank, a
# distilled student's whole image tower and its feature projection).
TRAINED_MODULES = ("head", "img_fc", "text_fc", "probe_fc", "prompts", "memory", "tower", "feature_proj")


class CheckpointError(RunFolderError):
    """A checkpoint does not fit the model it is loaded into."""


@dataclass(frozen=True)
class Position:
    """Where training stands: the next batch to train is ``batch`` of ``epoch`` of stage ``stage`` (indices from
    0), after ``step`` optimizer steps in all. ``epoch`` equal to the stage's epochs, or ``stage`` equal to the
    number of stages, means that stage, or the run, is done."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def next_epoch(self, stage: int, epoch: int) -> Position:
        """The start of the epoch after ``epoch`` of ``stage``."""
        return Position(stage, epoch + 1, 0, self.step)

    def next_stage(self, stage: int) -> Position:
        """The start of the stage after ``stage``."""
        return Position(stage + 1, 0, 0, self.step)


def trained_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a run trains (LoRA factors, heads, prompts); the frozen backbone is left out."""
    return {
        key: value.detach().cpu().contiguous()
        for key, value in module.state_dict().items()
        if "lora_A" in key or "lora_B" in key or key.split(".")[0] in TRAINED_MODULES
    }


def load_trained_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the trained tensors `trained_state` names, after checking their names and shapes."""
    try:
        check_tensors(state, trained_state(module), source)
    except RunFolderError as e:
        raise CheckpointError(str(e)) from None
    module.load_state_dict(state, strict=False)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": value.detach().cpu().contiguous()
        for index, slots in state["state"].items()
        for name, value in slots.items()
    }
    return tensors, json.dumps(state["param_groups"])


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str, source: str = "checkpoint"
) -> None:
    """Put back the optimizer state `save_checkpoint` flattened, after checking it fits ``optimizer``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            parts = key.split(".", 2)
            index, name = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
            if not index.isdigit() or int(index) >= len(params) or not name:
                raise CheckpointError(f"{source}: optimizer tensor {key} belongs to no parameter of this model")
            # Per-parameter slots (moments, momentum) have the parameter's shape; Adam's step count is a scalar.
            if value.dim() > 0 and value.shape != params[int(index)].shape:
                raise CheckpointError(f"{source}: optimizer tensor {key} has shape {list(value.shape)}, its "
                                      f"parameter {list(params[int(index)].shape)}")
            state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups)})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: the optimizer state does not fit this model ({e})") from None


def restore_schedule(schedule, metadata: dict[str, str], source: str = "checkpoint") -> None:
    """Put back the learning-rate schedule `save_checkpoint` stored in the metadata."""
    if "schedule" not in metadata:
        raise CheckpointError(f"{source}: holds no learning-rate schedule, which this method needs")
    try:
        schedule.load_state_dict(json.loads(metadata["schedule"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{source}: the learning-rate schedule does not fit this method ({e})") from None


def load_head(path: Path, dim: int) -> nn.Linear:
    """A linear head ``dim -> 1`` from a safetensors file of a probe's trained state (``head.weight``,
    ``head.bias``), as DGS-Net's first stage saves it."""
    head = nn.Linear(dim, 1)
    state = read_tensors(path, {f"head.{k}": v for k, v in head.state_dict().items()})
    head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()})
    return head


def save_checkpoint(method: nn.Module, optimizer, path: Path, position: Position, schedule=None) -> None:
    """Trained tensors, optimizer state, learning-rate schedule, random states and position, in one file."""
    tensors = trained_state(method)
    optimizer_tensors, groups = _optimizer_tensors(optimizer)
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on the GPU draws from the device's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {"position": json.dumps(position.to_dict()), "param_groups": groups}
    if schedule is not None:
        metadata["schedule"] = json.dumps(schedule.state_dict())
    atomic_save(tensors, path, metadata)


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Put back the random states `save_checkpoint` stored."""
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
