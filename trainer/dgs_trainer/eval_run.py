"""`dgs eval`: score a finished run on labelled data, per generator, with a named threshold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import load_samples
from .evaluate import best_balanced_threshold, metrics_by_generator, predict_samples
from .train import load_run, resolve_device

__all__ = ["CALIBRATION_FILE", "EvalConfig", "evaluate_run", "run_threshold"]

CALIBRATION_FILE = "calibration.json"


@dataclass
class EvalConfig:
    """What `dgs eval` takes."""

    run: str
    data: str
    split: str | None = None
    threshold: float | None = None
    calibrate: bool = False
    batch_size: int = 32
    device: str = "auto"
    workers: int = 2


def run_threshold(run: str | Path) -> tuple[float, str]:
    """The run's calibrated threshold and ``"calibrated"``, or 0.5 and ``"default"`` when it has none."""
    calibration = Path(run) / CALIBRATION_FILE
    if calibration.exists():
        return float(json.loads(calibration.read_text())["threshold"]), "calibrated"
    return 0.5, "default"


def evaluate_run(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Metrics of a run on ``config.data``.

    The threshold is, in order: the one given; with ``calibrate``, the one maximising balanced accuracy on this
    data, which is then stored in the run as its calibrated threshold; the run's stored calibrated threshold;
    0.5. The best threshold on this data is always reported too, named as the oracle threshold.
    """
    device = resolve_device(config.device)
    _, spec, model, _ = load_run(config.run, device=str(device))
    samples = load_samples(config.data, config.split)
    probabilities, unreadable = predict_samples(
        model, samples, spec, config.batch_size, device, config.workers, progress=progress
    )
    labels = np.array([s.label for s in samples])
    try:
        oracle, oracle_accuracy = best_balanced_threshold(labels, probabilities)
    except ValueError:
        oracle, oracle_accuracy = float("nan"), float("nan")
    calibration = Path(config.run) / CALIBRATION_FILE
    if config.calibrate:
        if np.isnan(oracle):
            raise ValueError(f"{config.data}: calibration needs both real and fake images")
        calibration.write_text(json.dumps({"threshold": oracle, "balanced_accuracy": oracle_accuracy,
                                           "data": str(config.data), "split": config.split}, indent=2))
    threshold, source = (config.threshold, "given") if config.threshold is not None else run_threshold(config.run)
    return {
        "run": str(config.run),
        "data": str(config.data),
        "threshold": threshold,
        "threshold_source": source,
        "oracle_threshold": None if np.isnan(oracle) else oracle,  # None: the data holds one class only
        "oracle_balanced_accuracy": None if np.isnan(oracle_accuracy) else oracle_accuracy,
        "unreadable": unreadable,
        "metrics": metrics_by_generator(samples, probabilities, threshold),
        "probabilities": {
            s.path: (None if np.isnan(p) else float(p)) for s, p in zip(samples, probabilities, strict=True)
        },
    }
