"""`dgs eval MODEL.dgs`: score labelled data with a model package exactly as it is deployed.

The images go through `Detector` (the package's preprocessing, backend, device and precision variant), so the
figures are those of the deployed model, on a machine with the SDK alone (no torch). The report has the shape of
a training run's (`dgs_trainer.eval_run.evaluate_run`), computed by the same `dgs_sdk.metrics`, plus what ran.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from .data import Sample, load_samples
from .detector import Detector
from .metrics import metrics_by_generator, oracle_threshold, probabilities_by_path, require_scores, robustness_entry
from .perturb import Perturbation, image_seed

__all__ = ["PackageEvalConfig", "evaluate_package"]


@dataclass
class PackageEvalConfig:
    """What `dgs eval MODEL.dgs` takes.

    Attributes:
        model: the `.dgs` package.
        data: labelled data root or CSV manifest (layouts in `dgs_sdk.data`).
        split: only images under a folder of this name (``val``, ``test``...).
        threshold: decision threshold; the package's own when None.
        precision: the package's variant to run (``auto``: the fastest the backend and device run).
        backend: ``auto`` or a name from `dgs_sdk.backends.BACKENDS`.
        device: ``None`` (best available), ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per inference call.
        workers: decoding threads (`Detector`'s default when None).
        perturbations: re-score the data under each of these (a robustness sweep), after the clean pass.
    """

    model: str
    data: str
    split: str | None = None
    threshold: float | None = None
    precision: str = "auto"
    backend: str = "auto"
    device: str | None = None
    batch_size: int = 32
    workers: int | None = None
    perturbations: tuple[Perturbation, ...] = ()


def _score(detector: Detector, samples: Sequence[Sample], perturbation: Perturbation | None, data: str,
           progress: bool) -> tuple[np.ndarray, dict[str, str]]:
    """Probabilities of "fake" (NaN where an image could not be scored) and the errors by path."""
    probabilities = np.full(len(samples), np.nan)
    errors: dict[str, str] = {}
    perturb = None
    if perturbation is not None:
        def perturb(image: np.ndarray, index: int) -> np.ndarray:
            return perturbation.apply(image, image_seed(samples[index].path, data))

    predictions = detector.predict_iter([s.path for s in samples], perturb=perturb)
    desc = "evaluating" if perturbation is None else f"evaluating, {perturbation.description}"
    bar = tqdm(predictions, total=len(samples), desc=desc, unit="img", file=sys.stderr, disable=not progress,
               leave=False)
    for i, prediction in enumerate(bar):
        if prediction.ok:
            probabilities[i] = prediction.probability
        else:
            errors[samples[i].path] = prediction.error
    return probabilities, errors


def evaluate_package(config: PackageEvalConfig, progress: bool = False) -> dict[str, Any]:
    """Metrics of a model package on ``config.data``, per generator and on average.

    The data is listed before the model is loaded, so that a wrong ``--data`` costs no model load (or TensorRT
    engine build). Images that cannot be decoded are counted (``unreadable``) and listed with the reason
    (``errors``), never fatal; data where none can be is an error.

    Returns:
        The report: ``package`` (path, precision variant, its file and sha256), ``backend``, ``device``, then the
        keys of a run's report: ``data``, ``split``, ``threshold``, ``threshold_source``, ``oracle_threshold``,
        ``oracle_balanced_accuracy``, ``unreadable``, ``errors``, ``metrics``, ``probabilities``; with
        ``config.perturbations``, ``robustness``: one `dgs_sdk.metrics.robustness_entry` per perturbation, scored
        at the same threshold (images a perturbation cannot be applied to count as unreadable there).

    Raises:
        DataLayoutError: ``config.data`` holds no labelled images.
        ModelPackageError / BackendUnavailable: the package, precision, backend or device cannot be used.
        EvaluationError: no image of the data could be scored.
    """
    samples = load_samples(config.data, config.split)
    detector = Detector(config.model, backend=config.backend, device=config.device, precision=config.precision,
                        batch_size=config.batch_size, threshold=config.threshold, workers=config.workers)
    probabilities, errors = _score(detector, samples, None, config.data, progress)
    require_scores(config.data, samples, probabilities)
    oracle, oracle_accuracy = oracle_threshold(samples, probabilities)
    robustness = []
    for perturbation in config.perturbations:
        perturbed, perturbed_errors = _score(detector, samples, perturbation, config.data, progress)
        robustness.append(robustness_entry(perturbation, samples, perturbed, detector.threshold,
                                           len(perturbed_errors)))
    backend = detector.backend
    report = {
        "package": {
            "path": str(config.model),
            "precision": detector.precision,
            "file": detector.manifest.variants[detector.precision].file,
            "sha256": backend.model_sha256,
        },
        "backend": backend.name,
        "device": backend.device,
        "data": str(config.data),
        "split": config.split,
        "threshold": detector.threshold,
        "threshold_source": "given" if config.threshold is not None else detector.manifest.threshold_source,
        "oracle_threshold": oracle,  # None: the data holds one class only
        "oracle_balanced_accuracy": oracle_accuracy,
        "unreadable": len(errors),
        "errors": errors,
        "metrics": metrics_by_generator(samples, probabilities, detector.threshold),
        "probabilities": probabilities_by_path(samples, probabilities),
    }
    if config.perturbations:
        report["robustness"] = robustness
    return report
