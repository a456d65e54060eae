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

import dataclasses
import json
import logging
import math
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dgs_sdk.errors import DgsError
from dgs_sdk.files import AtomicFile, open_regular, read_regular
from dgs_sdk.preprocess import PreprocessSpec

from .config import TrainConfig, TrainError

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
    "RunFolderError",
    "RunFolder",
    "MetricsLog",
    "atomic_save",
    "read_tensors",
    "check_tensors",
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
# config.json and calibration.json are a few kB; a run's tensors and logs stay well under the second bound.
MAX_RUN_JSON_BYTES = 16 * 1024**2
MAX_RUN_FILE_BYTES = 64 * 1024**3
# The run's own files and folders: nothing else may be written over them or into them.
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR, PROBE_FILE, BACKBONE_FILE, MODEL_FILE, CALIBRATION_FILE,
               TENSORBOARD_DIR)


class RunFolderError(TrainError, DgsError):
    """A file of a run folder is missing or damaged; the message names it."""


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file through a temporary file and a rename: a reader never sees half of it."""
    with AtomicFile(path) as out:
        save_file(tensors, str(out.tmp), metadata=metadata)


def _atomic_write_text(path: Path, text: str) -> None:
    with AtomicFile(path) as out:
        out.file.write(text.encode("utf-8"))


def _check_regular(path: Path) -> None:
    """Refuse, unopened, anything but a regular file of bounded size (a FIFO would hang, /dev/zero never end)."""
    file, _ = open_regular(path, MAX_RUN_FILE_BYTES, RunFolderError)
    file.close()


def _open_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file() and not path.exists():
        raise RunFolderError(f"{path}: missing")
    _check_regular(path)
    try:
        with safe_open(str(path), "pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise RunFolderError(f"{path}: not a readable safetensors file ({e}); the run is damaged") from None


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, Any], source: str | Path) -> None:
    """Raise `RunFolderError` unless ``tensors`` has exactly the keys of ``expected`` (tensors or shapes), each
    of the expected shape."""
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise RunFolderError(f"{source}: does not fit this model (missing {missing[:4]}, unexpected {extra[:4]})")
    for key, like in expected.items():
        shape = tuple(like.shape if isinstance(like, torch.Tensor) else like)
        if tuple(tensors[key].shape) != shape:
            raise RunFolderError(f"{source}: tensor {key} has shape {list(tensors[key].shape)}, this model needs "
                                 f"{list(shape)}")


def read_tensors(path: Path, expected: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; with ``expected`` (name -> tensor or shape), checked against it."""
    tensors, _ = _open_safetensors(path)
    if expected is not None:
        check_tensors(tensors, expected, path)
    return tensors


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


def _fits(value: Any, kind: Any) -> bool:
    """Whether a JSON value has the annotated type (bool is not a number here, an int is a float)."""
    if kind is type(None):
        return value is None
    if kind in (int, float):
        numbers = (int,) if kind is int else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    return isinstance(value, kind)


def _config_from(values: dict[str, Any], source: Path, out: str) -> TrainConfig:
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RunFolderError(f"{source}: unknown config keys {unknown}")
    hints = typing.get_type_hints(TrainConfig)
    for name, value in values.items():
        kinds = typing.get_args(hints[name]) or (hints[name],)
        if not any(_fits(value, kind) for kind in kinds):
            expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)
            raise RunFolderError(f"{source}: config key {name!r} must be {expected}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise RunFolderError(f"{source}: config key {name!r} is out of range ({str(value)[:24]}...)")
    values = {**values, "out": out}  # the run may have moved since it was written
    required = [name for name, field in fields.items() if field.default is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise RunFolderError(f"{source}: config lacks {missing}")
    try:
        return TrainConfig(**values)
    except TrainError as e:
        raise RunFolderError(f"{source}: {e}") from None


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

    def write_record(self, record: dict[str, Any]) -> None:
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

    def read_config(self) -> TrainConfig:
        """The run's `TrainConfig`, every key known and of its declared type; ``out`` is this folder."""
        return _config_from(self.read_record()["config"], self.config_file, str(self.path))

    def read_preprocess(self) -> PreprocessSpec:
        record = self.read_record()
        if "preprocess" not in record:
            raise RunFolderError(f"{self.config_file}: has no 'preprocess' object (the preprocessing spec)")
        try:
            return PreprocessSpec.from_dict(record["preprocess"])
        except (DgsError, ValueError, TypeError) as e:
            raise RunFolderError(f"{self.config_file}: bad preprocessing spec ({e})") from None

    # checkpoints/last.safetensors

    def read_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, str]]:
        """Tensors, position and metadata (optimizer ``param_groups``, ``schedule`` when there is one) of the
        checkpoint `save_checkpoint` wrote."""
        path = self.checkpoint_file
        tensors, metadata = _open_safetensors(path)
        try:
            position = _loads(metadata["position"])
            _loads(metadata["param_groups"])
            if "schedule" in metadata:
                _loads(metadata["schedule"])
        except (KeyError, json.JSONDecodeError) as e:
            raise RunFolderError(f"{path}: not a checkpoint of dgs train (its metadata lacks or garbles {e})") from None
        keys = ("stage", "epoch", "batch", "step")
        if not (isinstance(position, dict) and all(_fits(position.get(k), int) and 0 <= position[k] < 2**63
                                                   for k in keys)):
            raise RunFolderError(f"{path}: position must give {', '.join(keys)} as counts, got {position!r}")
        rng = tensors.get("rng.torch")
        if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise RunFolderError(f"{path}: the random state rng.torch is missing or malformed")
        if "rng.cuda" in tensors and (tensors["rng.cuda"].dtype != torch.uint8 or tensors["rng.cuda"].dim() != 1):
            raise RunFolderError(f"{path}: the random state rng.cuda is malformed")
        return tensors, {k: position[k] for k in keys}, metadata

    # calibration.json

    def read_threshold(self) -> tuple[float, str]:
        """The calibrated threshold and ``"calibrated"``, or 0.5 and ``"default"`` when the run has none."""
        if not self.calibration_file.exists():
            return 0.5, "default"
        record = _read_json(self.calibration_file)
        if not isinstance(record, dict) or "threshold" not in record:
            raise RunFolderError(f"{self.calibration_file}: expected a JSON object with a 'threshold'")
        value = record["threshold"]
        if not (_fits(value, float) and 0 <= value <= 1 and math.isfinite(value)):  # a huge int has no float
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
