"""The run folder: its layout, and checked reading and writing of every file in it.

::

    RUN/
    ├── config.json              the resolved `TrainConfig`, preprocessing spec and provenance
    ├── metrics.jsonl            one JSON line per optimizer step and per validation, each with its step
    ├── checkpoints/last.safetensors   trained tensors, optimizer state, position (stage, epoch, batch, step)
    ├── probe.safetensors        DGS-Net's stage-1 probe head (dgs method only)
    ├── backbone.safetensors     the backbone, only when it was randomly initialised (--pretrained none)
    ├── model.safetensors        the trained tensors of the finished run (LoRA, heads, prompts)
    ├── calibration.json         the threshold `dgs eval --calibrate` chose, when it was run
    └── tensorboard/             the TensorBoard log, with --tensorboard

Training, evaluation and export open a run through `RunFolder` only. Every reader checks what it reads and
raises `RunFolderError` naming the file, so a damaged run gives a message, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgs_sdk.errors import DgsError
from dgs_sdk.files import AtomicFile, read_regular
from dgs_sdk.preprocess import PreprocessSpec

from .checkpoint import Position, load_trained_state, trained_state
from .config import CONFIG_FORMAT, ConfigError, TrainConfig, legacy_config
from .errors import RunFolderError
from .methods import MethodContext
from .models import create_clip
from .tensor_files import MAX_RUN_FILE_BYTES, atomic_save, open_safetensors, read_tensors

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "CHECKPOINTS_DIR",
    "CHECKPOINT_FILE",
    "PROBE_FILE",
    "BACKBONE_FILE",
    "MODEL_FILE",
    "CALIBRATION_FILE",
    "TENSORBOARD_DIR",
    "RUN_ENTRIES",
    "LoadedRun",
    "RunFolderError",
    "RunFolder",
    "MetricsLog",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_FILE = f"{CHECKPOINTS_DIR}/last.safetensors"
PROBE_FILE = "probe.safetensors"
BACKBONE_FILE = "backbone.safetensors"
MODEL_FILE = "model.safetensors"
CALIBRATION_FILE = "calibration.json"
TENSORBOARD_DIR = "tensorboard"
# config.json and calibration.json are a few kB.
MAX_RUN_JSON_BYTES = 16 * 1024**2
# The run's own files and folders: nothing else may be written over them or into them.
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR, PROBE_FILE, BACKBONE_FILE, MODEL_FILE, CALIBRATION_FILE,
               TENSORBOARD_DIR)


def _atomic_write_text(path: Path, text: str) -> None:
    with AtomicFile(path) as out:
        out.file.write(text.encode("utf-8"))


def _loads(text: str) -> Any:
    """JSON; nesting too deep for the parser, or an integer of thousands of digits, is reported as invalid JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:80], 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # Python's limit on the digits of an integer
        raise json.JSONDecodeError(str(e), text[:80], 0) from None


def _read_json(path: Path) -> Any:
    if not os.path.lexists(path):
        raise RunFolderError(f"{path}: missing")
    try:
        text = read_regular(path, MAX_RUN_JSON_BYTES, RunFolderError).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RunFolderError(f"{path}: cannot be read ({e})") from None
    try:
        return _loads(text)
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


@dataclass
class LoadedRun:
    """A finished run, loaded: its config, preprocessing spec, trained module (eval mode; calling it gives the logit
    of "fake") and config.json record."""

    config: TrainConfig
    spec: PreprocessSpec
    model: nn.Module
    record: dict[str, Any]


class RunFolder:
    """One run folder: where each of its files lives, and checked reading and writing of each."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.metrics_file = self.path / METRICS_FILE
        self.checkpoints_dir = self.path / CHECKPOINTS_DIR
        self.checkpoint_file = self.path / CHECKPOINT_FILE
        self.probe_file = self.path / PROBE_FILE
        self.backbone_file = self.path / BACKBONE_FILE
        self.model_file = self.path / MODEL_FILE
        self.calibration_file = self.path / CALIBRATION_FILE
        self.tensorboard_dir = self.path / TENSORBOARD_DIR

    def __str__(self) -> str:
        return str(self.path)

    def entry_holding(self, path: str | os.PathLike) -> str | None:
        """The run's own file or folder (one of `RUN_ENTRIES`) that ``path`` is or lies inside, else None."""
        target = Path(path).resolve()
        for name in RUN_ENTRIES:
            entry = (self.path / name).resolve()
            if target == entry or entry in target.parents:
                return name
        return None

    def check_finished(self) -> None:
        for needed in (self.config_file, self.model_file):
            if not needed.exists():
                raise RunFolderError(f"{self.path}: not a finished training run ({needed.name} is missing)")

    # config.json

    def write_record(self, config: TrainConfig, spec: PreprocessSpec, provenance: dict[str, Any]) -> None:
        """config.json of a new run: its config (as `TrainConfig.to_dict` nests it), spec and provenance."""
        record = {"format": CONFIG_FORMAT, "config": config.to_dict(), "preprocess": spec.to_dict(),
                  "provenance": provenance}
        _atomic_write_text(self.config_file, json.dumps(record, indent=2))

    def read_record(self) -> dict[str, Any]:
        """config.json, checked to hold a ``config`` object, and ``preprocess`` and ``provenance`` objects if any."""
        record = _read_json(self.config_file)
        if not isinstance(record, dict):
            raise RunFolderError(f"{self.config_file}: expected a JSON object, found {type(record).__name__}")
        if not isinstance(record.get("config"), dict):
            raise RunFolderError(f"{self.config_file}: has no 'config' object (the run's training settings)")
        for key in ("preprocess", "provenance"):
            if key in record and not isinstance(record[key], dict):
                raise RunFolderError(f"{self.config_file}: {key!r} must be an object")
        return record

    def is_legacy(self) -> bool:
        """Whether config.json was written before settings were nested (``format`` 2)."""
        return "format" not in self.read_record()

    def read_config(self) -> TrainConfig:
        """The run's `TrainConfig`, every key known and of its declared type; ``out`` is this folder.

        A run written before ``format`` 2 is read with the behaviour it was trained with (`legacy_config`).
        """
        record = self.read_record()
        version = record.get("format")
        try:
            if version is None:
                return legacy_config(record["config"], self.config_file, out=str(self.path))
            if version != CONFIG_FORMAT:
                raise RunFolderError(f"{self.config_file}: format {version!r} is not one this dgs reads "
                                     f"({CONFIG_FORMAT}); it was written by a newer dgs")
            return TrainConfig.from_dict(record["config"], self.config_file, out=str(self.path))
        except ConfigError as e:
            raise RunFolderError(str(e)) from None

    def read_preprocess(self) -> PreprocessSpec:
        record = self.read_record()
        if "preprocess" not in record:
            raise RunFolderError(f"{self.config_file}: has no 'preprocess' object (the preprocessing spec)")
        try:
            return PreprocessSpec.from_dict(record["preprocess"])
        except (DgsError, ValueError, TypeError) as e:
            raise RunFolderError(f"{self.config_file}: bad preprocessing spec ({e})") from None

    # backbone.safetensors, model.safetensors

    def create_backbone(self, config: TrainConfig, device: str | torch.device = "cpu", saved: bool = True) -> nn.Module:
        """The run's open_clip model. A randomly initialised one (``--pretrained none``) cannot be rebuilt from its
        name: unless ``saved`` is False (a new run, which then calls `keep_backbone`), it is read back from
        backbone.safetensors.

        Raises:
            TrainError: the architecture or weights cannot be had.
            RunFolderError: backbone.safetensors is missing or does not fit.
        """
        clip = create_clip(config.arch, config.pretrained, device=str(device), quick_gelu=config.quick_gelu,
                           image_size=config.image_size)
        if saved and str(config.pretrained).lower() == "none":
            clip.load_state_dict(read_tensors(self.backbone_file, expected=clip.state_dict()))
        return clip

    def keep_backbone(self, config: TrainConfig, clip: nn.Module) -> None:
        """backbone.safetensors of a new run whose backbone was randomly initialised."""
        if str(config.pretrained).lower() == "none":
            atomic_save({k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}, self.backbone_file)

    def load(self, device: str | torch.device = "cpu") -> LoadedRun:
        """The finished run: its last stage's module with the trained tensors of model.safetensors.

        Raises:
            RunFolderError: the folder is not a finished run, or one of its files is damaged (the message names it).
        """
        self.check_finished()
        record = self.read_record()
        config = self.read_config()
        spec = self.read_preprocess()
        try:
            clip = self.create_backbone(config, device)
        except RunFolderError:
            raise
        except DgsError as e:
            raise RunFolderError(f"{self.config_file}: {e}") from None
        method = config.method_runner()
        module = method.build(method.stages()[-1].name, MethodContext(clip, config.arch, self.probe_file))
        load_trained_state(module, read_tensors(self.model_file), str(self.model_file))
        return LoadedRun(config, spec, module.to(device).eval(), record)

    def save_model(self, module: nn.Module) -> None:
        """model.safetensors: the trained tensors of the finished run."""
        atomic_save(trained_state(module), self.model_file)

    # checkpoints/last.safetensors

    def read_checkpoint(self) -> tuple[dict[str, torch.Tensor], Position, dict[str, str]]:
        """Tensors, position and metadata (optimizer ``param_groups``, ``schedule`` when there is one) of the
        checkpoint `save_checkpoint` wrote."""
        path = self.checkpoint_file
        tensors, metadata = open_safetensors(path)
        try:
            position = _loads(metadata["position"])
            _loads(metadata["param_groups"])
            if "schedule" in metadata:
                _loads(metadata["schedule"])
        except (KeyError, json.JSONDecodeError) as e:
            raise RunFolderError(f"{path}: not a checkpoint of dgs train (its metadata lacks or garbles {e})") from None
        keys = ("stage", "epoch", "batch", "step")
        if not (isinstance(position, dict) and all(_is_count(position.get(k)) for k in keys)):
            raise RunFolderError(f"{path}: position must give {', '.join(keys)} as counts, got {position!r}")
        rng = tensors.get("rng.torch")
        if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise RunFolderError(f"{path}: the random state rng.torch is missing or malformed")
        if "rng.cuda" in tensors and (tensors["rng.cuda"].dtype != torch.uint8 or tensors["rng.cuda"].dim() != 1):
            raise RunFolderError(f"{path}: the random state rng.cuda is malformed")
        return tensors, Position(**{k: position[k] for k in keys}), metadata

    # calibration.json

    def read_threshold(self) -> tuple[float, str]:
        """The calibrated threshold and ``"calibrated"``, or 0.5 and ``"default"`` when the run has none."""
        if not self.calibration_file.exists():
            return 0.5, "default"
        record = _read_json(self.calibration_file)
        if not isinstance(record, dict) or "threshold" not in record:
            raise RunFolderError(f"{self.calibration_file}: expected a JSON object with a 'threshold'")
        value = record["threshold"]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and 0 <= value <= 1 and math.isfinite(value)):  # a huge int has no float
            raise RunFolderError(f"{self.calibration_file}: threshold must be a number from 0 to 1, got {value!r} "
                                 "(calibrate again with dgs eval --calibrate, or delete the file)")
        return float(value), "calibrated"

    def write_calibration(self, record: dict[str, Any]) -> None:
        _atomic_write_text(self.calibration_file, json.dumps(record, indent=2))


def _records_until(path: Path, step: int) -> list[str]:
    """The complete lines of metrics.jsonl up to ``step``; a line a kill cut short is dropped."""
    if not path.exists():
        return []
    text = read_regular(path, MAX_RUN_FILE_BYTES, RunFolderError).decode("utf-8", errors="replace")
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            record = _loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and not (isinstance(record.get("step"), int) and record["step"] > step):
            kept.append(line)
    return kept


class MetricsLog:
    """metrics.jsonl and, when asked, the TensorBoard log.

    A resumed run replays the steps after its checkpoint: ``resume_step`` (the checkpoint's step) drops the
    records written after it, in both logs, so that each step is logged once.
    """

    def __init__(self, run: RunFolder, tensorboard: bool, resume_step: int | None = None) -> None:
        if resume_step is None:
            self.file = open(run.metrics_file, "w", encoding="utf-8")
        else:
            _atomic_write_text(run.metrics_file, "".join(_records_until(run.metrics_file, resume_step)))
            self.file = open(run.metrics_file, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard); no TensorBoard log is written")
            else:
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(str(run.tensorboard_dir), purge_step=purge)

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
