"""The accuracy gate: a reduced-precision variant is kept only if it scores held-out labelled images like float32.

Every variant and the float32 graph run in real ONNX Runtime CPU sessions on the same preprocessed images; the
figures compare each variant with float32 (|delta p|, label agreement at the package threshold) and with the
labels (AUC, accuracy). A variant passes when its AUC is at most ``max_auc_drop`` below float32's and at least
``min_agreement`` of its labels equal float32's, on the images float32 decides clearly: those whose float32
probability lies within `NEAR_TIE` of the threshold are near ties, which any rounding may flip, and are counted
apart (``near_tie_flips``).

The gate runs on ONNX Runtime's CPU kernels; TensorRT's INT8 and FP16 kernels round differently, so scores on a
GPU differ slightly from these figures (check on the device with ``dgs eval MODEL.dgs --backend tensorrt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dgs_sdk.backends import create_backend
from dgs_sdk.detector import sigmoid
from dgs_sdk.errors import ModelPackageError
from dgs_sdk.metrics import binary_metrics
from dgs_sdk.package import ModelPackage

__all__ = [
    "DEFAULT_MAX_AUC_DROP",
    "DEFAULT_MIN_AGREEMENT",
    "GateConfig",
    "NEAR_TIE",
    "VariantScore",
    "format_table",
    "gate_variants",
    "score_variant",
    "variant_logits",
]

DEFAULT_MAX_AUC_DROP = 0.005
# At most 1 image in 100 may change label against float32. The images that can change are those scored within
# |delta p| of the threshold; a sound INT8 or FP16 variant of a CLIP detector moves probabilities by about 1e-3
# to 1e-2, which moves a few images in a thousand. More than 1 % means the variant has become a different
# detector near its decision boundary, even when its AUC (a ranking measure, blind to a shifted threshold) holds.
DEFAULT_MIN_AGREEMENT = 0.99
# Images whose float32 probability is this close to the threshold are undecided: an FP16 variant that moves
# probabilities by 3e-4 flipped one such image of 32 on the demo data (96.9 % agreement) while changing nothing
# a user would call a decision. Their flips are reported, not held against the variant.
NEAR_TIE = 0.01
# Under this many gate images, one image is more than 0.5 % of the agreement and AUC moves in coarse steps.
FEW_GATE_IMAGES = 200
GATE_BATCH = 16


@dataclass
class GateConfig:
    """Thresholds of the accuracy gate."""

    max_auc_drop: float = DEFAULT_MAX_AUC_DROP
    min_agreement: float = DEFAULT_MIN_AGREEMENT


@dataclass
class VariantScore:
    """A variant's figures against float32 and the labels, and the gate's decision.

    ``figures`` (stored as the variant's ``accuracy`` in the manifest): ``images``, ``max_abs_delta_p``,
    ``mean_abs_delta_p``, ``max_abs_delta_logit``, ``agreement`` (share of labels equal to float32's at the
    threshold, among the images float32 decides clearly), ``near_tie_flips`` (labels changed among the near
    ties, `NEAR_TIE`), ``accuracy`` and ``fp32_accuracy`` at the threshold, ``auc``, ``fp32_auc`` and ``auc_drop``
    (None when the images hold a single class), ``threshold``, ``ort_level`` (the graph optimization level it
    was scored at) and the gate's limits.
    """

    precision: str
    figures: dict[str, Any]
    passed: bool
    reasons: list[str] = field(default_factory=list)


def variant_logits(package: ModelPackage, precision: str, batch: np.ndarray) -> tuple[np.ndarray, str]:
    """Logits of one variant of ``package`` for a preprocessed batch ``[N, 3, S, S]``, from the SDK's ONNX Runtime
    backend on the CPU (so at the graph optimization level the SDK runs that variant at), `GATE_BATCH` images at
    a time; and that level's name.

    Raises:
        ModelPackageError: ONNX Runtime cannot load or run the variant, or its smoke check fails.
    """
    import onnxruntime as ort

    from dgs_sdk.backends.onnxruntime import optimization_level

    backend = create_backend("onnxruntime", package, device="cpu", precision=precision)
    parts = [backend.run(batch[i : i + GATE_BATCH]) for i in range(0, len(batch), GATE_BATCH)]
    level = optimization_level(ort, precision, on_cuda=False).name
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), level


def score_variant(precision: str, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray, threshold: float,
                  config: GateConfig, ort_level: str | None = "ORT_ENABLE_ALL", error: str | None = None,
                  ) -> VariantScore:
    """Compare a variant's ``logits`` with float32's ``reference`` on images with ``labels`` (0 real, 1 fake);
    ``error`` says why the variant could not be run (it then fails, whatever its logits)."""
    reference, logits = np.asarray(reference, np.float64), np.asarray(logits, np.float64)
    labels = np.asarray(labels, int)
    p_ref, p = sigmoid(reference), sigmoid(logits)
    delta = np.abs(p - p_ref)
    finite = bool(np.all(np.isfinite(logits)))
    fake_ref, fake = p_ref >= threshold, p >= threshold
    decided = np.abs(p_ref - threshold) >= NEAR_TIE
    reference_metrics = binary_metrics(labels, p_ref, threshold)
    variant_metrics = binary_metrics(labels, p, threshold) if finite else {"auc": None, "acc": 0.0}
    auc_ref, auc_variant = reference_metrics["auc"], variant_metrics["auc"]
    auc_drop = None if auc_ref is None or auc_variant is None else auc_ref - auc_variant
    agreement = float(np.mean(fake[decided] == fake_ref[decided])) if decided.any() else 1.0
    figures: dict[str, Any] = {
        "images": len(labels),
        "max_abs_delta_p": float(delta.max()) if finite else None,
        "mean_abs_delta_p": float(delta.mean()) if finite else None,
        "max_abs_delta_logit": float(np.abs(logits - reference).max()) if finite else None,
        "agreement": agreement if finite else 0.0,
        "near_tie_flips": int(np.sum(fake[~decided] != fake_ref[~decided])) if finite else None,
        "accuracy": variant_metrics["acc"],
        "fp32_accuracy": reference_metrics["acc"],
        "auc": auc_variant,
        "fp32_auc": auc_ref,
        "auc_drop": auc_drop,
        "threshold": float(threshold),
        "ort_level": ort_level,
        "max_auc_drop": config.max_auc_drop,
        "min_agreement": config.min_agreement,
    }
    reasons = []
    if error:
        reasons.append(error)
    elif not finite:
        reasons.append("its logits are not all finite numbers")
    if auc_drop is not None and auc_drop > config.max_auc_drop:
        reasons.append(f"AUC {auc_variant:.4f} is {auc_drop:.4f} below float32's {auc_ref:.4f} "
                       f"(at most {config.max_auc_drop:g} allowed)")
    if finite and figures["agreement"] < config.min_agreement:
        reasons.append(f"labels agree with float32's on {figures['agreement']:.2%} of the images it decides "
                       f"clearly (at least {config.min_agreement:.2%} required)")
    return VariantScore(precision, figures, passed=not reasons, reasons=reasons)


def gate_variants(package: ModelPackage, precisions: Sequence[str], batch: np.ndarray, labels: np.ndarray,
                  config: GateConfig | None = None) -> list[VariantScore]:
    """Score variants ``precisions`` of ``package`` against its fp32 variant on ``batch`` (preprocessed images
    ``[N, 3, S, S]``) with ``labels``, at the package's threshold; one `VariantScore` each, in the order given.

    A variant that ONNX Runtime cannot load or run, or whose output is not finite, fails with the reason.
    """
    config = config or GateConfig()
    threshold = package.manifest.threshold
    reference, _ = variant_logits(package, "fp32", batch)
    scores = []
    for precision in precisions:
        try:
            logits, level = variant_logits(package, precision, batch)
            error = None
        except ModelPackageError as e:
            logits, level, error = np.full(len(batch), np.nan, np.float32), None, f"ONNX Runtime cannot run it: {e}"
        scores.append(score_variant(precision, reference, logits, labels, threshold, config, level, error))
    return scores


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(scores: list[VariantScore]) -> str:
    """The gate's figures as a text table, one row per variant plus float32's, and why a variant failed."""
    if not scores:
        return ""
    first = scores[0].figures
    rows = [("variant", "AUC", "AUC drop", "accuracy", "agreement", "max |dp|", "mean |dp|", "result")]
    rows.append(("fp32", _number(first["fp32_auc"]), "", _number(first["fp32_accuracy"]), "", "", "", "reference"))
    for score in scores:
        f = score.figures
        rows.append((score.precision, _number(f["auc"]), _number(f["auc_drop"]), _number(f["accuracy"]),
                     _number(f["agreement"]), _number(f["max_abs_delta_p"], 5), _number(f["mean_abs_delta_p"], 5),
                     "pass" if score.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(0, f"accuracy gate on {first['images']} labelled images, threshold {first['threshold']:.4f} "
                    f"(ONNX Runtime CPU; at most {first['max_auc_drop']:g} AUC drop, at least "
                    f"{first['min_agreement']:.2%} label agreement with fp32 away from the threshold):")
    if first["images"] < FEW_GATE_IMAGES:
        lines.append(f"note: {first['images']} images are few for these bounds (one image is "
                     f"{1 / first['images']:.1%} of the agreement); give more with --calib-data or a larger "
                     "validation split")
    for score in scores:
        if score.figures.get("near_tie_flips"):
            lines.append(f"{score.precision}: {score.figures['near_tie_flips']} label(s) flipped within "
                         f"{NEAR_TIE:g} of the threshold (near ties, not counted)")
    for score in scores:
        lines.extend(f"{score.precision} not written: {reason}" for reason in score.reasons)
    return "\n".join(lines)
