"""Run checkpoints: trained tensors, optimizer state and position in safetensors files, written atomically.

Only what a run trains is stored (LoRA factors and linear heads); the frozen backbone is rebuilt from the
run's ``arch`` and ``pretrained``. safetensors holds flat tensors, so the optimizer state is flattened into
``optimizer.<param index>.<slot>`` tensors and its parameter groups go into the file's metadata as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "TRAINED_MODULES",
    "CheckpointError",
    "trained_state",
    "load_trained_state",
    "atomic_save",
    "save_checkpoint",
    "read_checkpoint",
    "restore_optimizer",
    "restore_rng",
    "load_head",
]

# Top-level submodules whose every tensor a run trains or accumulates (heads, MiraGe's prompts and memory bank).
TRAINED_MODULES = ("head", "img_fc", "text_fc", "probe_fc", "prompts", "memory")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def trained_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a run trains (LoRA factors, heads, prompts); the frozen backbone is left out."""
    return {
        key: value.detach().cpu().contiguous()
        for key, value in module.state_dict().items()
        if "lora_A" in key or "lora_B" in key or key.split(".")[0] in TRAINED_MODULES
    }


def load_trained_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = set(trained_state(module))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"{source}: does not fit this model (missing {missing[:4]}, unexpected {extra[:4]})")
    module.load_state_dict(state, strict=False)


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": value.detach().cpu().contiguous()
        for index, slots in state["state"].items()
        for name, value in slots.items()
    }
    return tensors, json.dumps(state["param_groups"])


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(groups)})


def load_head(path: Path, dim: int) -> nn.Linear:
    """A linear head ``dim -> 1`` from a safetensors file of one module's state (``<name>.weight``, ``<name>.bias``)."""
    head = nn.Linear(dim, 1)
    state = load_file(str(path))
    head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()})
    return head


def save_checkpoint(method: nn.Module, optimizer, path: Path, position: dict[str, int], schedule=None) -> None:
    """Trained tensors, optimizer state, learning-rate schedule, random states and position, in one file."""
    tensors = trained_state(method)
    optimizer_tensors, groups = _optimizer_tensors(optimizer)
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on the GPU draws from the device's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {"position": json.dumps(position), "param_groups": groups}
    if schedule is not None:
        metadata["schedule"] = json.dumps(schedule.state_dict())
    atomic_save(tensors, path, metadata)


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Put back the random states `save_checkpoint` stored."""
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, str]]:
    """Tensors, position and metadata (optimizer ``param_groups``, ``schedule`` when there is one) of a
    checkpoint written by `save_checkpoint`."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), json.loads(meta["position"]), meta


