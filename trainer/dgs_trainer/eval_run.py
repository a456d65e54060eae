"""`dgs eval`: score a finished run on labelled data, per generator, with a named threshold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgs_sdk.data import load_samples
from dgs_sdk.files import file_sha256
from dgs_sdk.metrics import (
    metrics_by_generator,
    oracle_threshold,
    probabilities_by_path,
    require_scores,
    robustness_entry,
)
from dgs_sdk.perturb import Perturbation

from .errors import ConfigError, RunFolderError, TrainError
from .evaluate import predict_samples
from .run_folder import CALIBRATION_FILE, RunFolder
from .train import resolve_device

__all__ = ["CALIBRATION_FILE", "EvalConfig", "check_report_path", "evaluate_run", "run_threshold"]


@dataclass
class EvalConfig:
    """What `dgs eval` takes."""

    run: str
    data: str
    split: str | None = None
    threshold: float | None = None
    calibrate: bool = False
    tta: int = 1
    batch_size: int = 32
    device: str = "auto"
    workers: int = 2
    perturbations: tuple[Perturbation, ...] = ()


def run_threshold(run: str | Path) -> tuple[float, str]:
    """The run's calibrated threshold and ``"calibrated"``, or 0.5 and ``"default"`` when it has none.

    Raises:
        RunFolderError: calibration.json is not JSON, or its threshold is not a number from 0 to 1.
    """
    return RunFolder(run).read_threshold()


def check_report_path(run: str | Path, out: str | Path) -> None:
    """Refuse to write a report (``--json``) over one of the run's own files or into its folders.

    Raises:
        ConfigError: naming ``out`` and the run's entry it would destroy.
    """
    owned = RunFolder(run).entry_holding(out)
    if owned:
        raise ConfigError(f"--json {out}: {owned} belongs to the run, the metrics cannot be written over it or into it")


def evaluate_run(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Metrics of a run on ``config.data``.

    The threshold is, in order: the one given; with ``calibrate``, the one maximising balanced accuracy on this
    data, which is then stored in the run as its calibrated threshold; the run's stored calibrated threshold;
    0.5. The best threshold on this data is always reported too, named as the oracle threshold. With
    ``perturbations``, the data is scored again under each (``robustness``, at the same threshold).
    """
    device = resolve_device(config.device)
    loaded = RunFolder(config.run).load(device)
    if config.tta > 1 and loaded.spec.transform != "patch-select":
        raise ConfigError(f"--tta {config.tta}: test-time mosaic orders need patch-select preprocessing; {config.run} "
                          f"uses {loaded.spec.transform}")
    # Settled before any image is scored, so that a damaged calibration.json stops evaluation at once.
    threshold, source = config.threshold, "given"  # with calibrate and no threshold, set once calibrated
    if config.threshold is None and not config.calibrate:
        threshold, source = run_threshold(config.run)
    samples = load_samples(config.data, config.split)
    probabilities, unreadable = predict_samples(
        loaded.model, samples, loaded.spec, config.batch_size, device, config.workers, progress=progress,
        tta=config.tta,
    )
    require_scores(config.data, samples, probabilities)
    oracle, oracle_accuracy = oracle_threshold(samples, probabilities)
    if config.calibrate:
        if oracle is None:
            raise TrainError(f"{config.data}: calibration needs both real and fake images")
        RunFolder(config.run).write_calibration({"threshold": oracle, "balanced_accuracy": oracle_accuracy,
                                                 "data": str(config.data), "split": config.split})
        if config.threshold is None:
            threshold, source = oracle, "calibrated"
    robustness = []
    for perturbation in config.perturbations:
        perturbed, perturbed_unreadable = predict_samples(
            loaded.model, samples, loaded.spec, config.batch_size, device, config.workers, progress=progress,
            tta=config.tta, perturbation=perturbation, data=config.data,
        )
        robustness.append(robustness_entry(perturbation, samples, perturbed, threshold, perturbed_unreadable))
    model_file = RunFolder(config.run).model_file
    report = {
        "run": str(config.run),
        "checkpoint": {"path": str(model_file), "sha256": file_sha256(model_file, RunFolderError)},
        "data": str(config.data),
        "split": config.split,
        "threshold": threshold,
        "threshold_source": source,
        "tta": config.tta,
        "oracle_threshold": oracle,  # None: the data holds one class only
        "oracle_balanced_accuracy": oracle_accuracy,
        "unreadable": unreadable,
        "metrics": metrics_by_generator(samples, probabilities, threshold),
        "probabilities": probabilities_by_path(samples, probabilities),
    }
    if config.perturbations:
        report["robustness"] = robustness
    return report
