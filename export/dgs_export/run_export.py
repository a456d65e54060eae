"""`dgs export`: a finished training run -> a verified `.dgs` model package, with reduced-precision variants
that passed the accuracy gate."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgs_sdk.data import load_samples, spread
from dgs_sdk.errors import DgsError
from dgs_sdk.image import load_image
from dgs_sdk.package import PRECISIONS, VARIANT_FILES, ModelPackage, Variant, write_package
from dgs_sdk.scan import discover
from dgs_trainer.eval_run import run_threshold
from dgs_trainer.run_folder import RunFolder

from .accuracy_gate import (
    DEFAULT_MAX_AUC_DROP,
    DEFAULT_MIN_AGREEMENT,
    GateConfig,
    VariantScore,
    format_table,
    gate_variants,
)
from .onnx_export import DEFAULT_OPSET, ExportError, export_package
from .precision import DEFAULT_CALIBRATION_IMAGES, ImageSets, choose_image_sets, convert, load_calibration_images

__all__ = ["PACKAGE_SUFFIX", "ExportConfig", "ExportResult", "GateError", "add_variants", "check_package_path",
           "export_run", "export_run_report", "parity_images", "parse_precisions"]

PACKAGE_SUFFIX = ".dgs"
DEFAULT_GATE_IMAGES = 1000


@dataclass
class ExportConfig:
    """What `dgs export` takes.

    Attributes:
        precisions: the variants to write (see `dgs_sdk.package.PRECISIONS`); every one but fp32 is converted
            from the float32 graph and must pass the accuracy gate.
        calib_data: images (a folder, labelled or not) to calibrate the fp16/int8 variants and verify the export
            with; the run's training images calibrate, and its validation (else training) images verify, when None.
        calib_images: at most this many images calibrate (spread evenly over what is there).
        gate_images: at most this many held-out labelled images score the variants.
        max_auc_drop / min_agreement: the accuracy gate (`dgs_export.accuracy_gate`).
    """

    run: str
    out: str
    opset: int = DEFAULT_OPSET
    batch: str = "dynamic"
    calib_data: str | None = None
    max_images: int = 32
    precisions: tuple[str, ...] = ("fp32",)
    calib_images: int = DEFAULT_CALIBRATION_IMAGES
    gate_images: int = DEFAULT_GATE_IMAGES
    max_auc_drop: float = DEFAULT_MAX_AUC_DROP
    min_agreement: float = DEFAULT_MIN_AGREEMENT


class GateError(ExportError):
    """No variant asked for passed the accuracy gate, so there is no package to write; the message has the figures."""


@dataclass
class ExportResult:
    """The package written and the accuracy gate's verdict on each reduced-precision variant asked for."""

    path: Path
    scores: list[VariantScore] = field(default_factory=list)
    images: ImageSets | None = None

    @property
    def refused(self) -> list[str]:
        """The variants that failed the gate (not in the package)."""
        return [score.precision for score in self.scores if not score.passed]


def parse_precisions(text: str) -> tuple[str, ...]:
    """``"fp32,int8-cpu"`` -> ``("fp32", "int8-cpu")``, in `PRECISIONS` order, each once.

    Raises:
        ExportError: an unknown or empty name.
    """
    names = [name.strip().lower() for name in text.split(",")]
    unknown = [name for name in names if name not in PRECISIONS]
    if unknown or not names:
        raise ExportError(f"--precision {text!r}: {', '.join(map(repr, unknown)) or 'nothing'} is not a precision "
                          f"(expected a comma-separated list of {', '.join(PRECISIONS)})")
    return tuple(p for p in PRECISIONS if p in names)


def parity_images(paths: list[str], limit: int) -> list[np.ndarray]:
    """Up to ``limit`` decodable images spread evenly over ``paths`` (unreadable ones are passed over)."""
    images = []
    for path in spread(paths, limit):
        try:
            images.append(load_image(path))
        except DgsError:
            continue
    return images


def check_package_path(out: str | Path, run: str | Path) -> None:
    """Refuse an ``out`` that is not a ``.dgs`` file name, or that is, or lies inside, one of the run's own files
    or folders (writing there would destroy the run). Another name in the run folder (``RUN/model.dgs``) is fine.

    Raises:
        ExportError: the message names ``out`` and what is wrong with it.
    """
    if Path(out).suffix.lower() != PACKAGE_SUFFIX:
        raise ExportError(f"--out {out}: a model package's name must end in {PACKAGE_SUFFIX}")
    entry = RunFolder(run).entry_holding(out)
    if entry is not None:
        raise ExportError(f"--out {out}: {entry} belongs to the run, a package cannot be written over it or into it "
                         f"(write it elsewhere, e.g. {Path(run) / 'model.dgs'})")


def add_variants(fp32_package: str | Path, out: str | Path, precisions: tuple[str, ...], images: ImageSets,
                 gate: GateConfig) -> tuple[Path, list[VariantScore]]:
    """Convert a verified float32 package's graph to the reduced ``precisions``, score each variant with the
    accuracy gate and write ``out``: the fp32 variant if in ``precisions`` and the variants that passed, each
    with its figures as its ``accuracy``.

    Calibration and gate images go through the package's own preprocessing, as `dgs_sdk.Detector` does.

    Raises:
        GateError: nothing is left to write (fp32 not asked for and every variant failed).
    """
    package = ModelPackage.load(fp32_package)
    manifest, spec = package.manifest, package.manifest.preprocess
    fp32_bytes = package.variant_bytes("fp32")
    reduced = [p for p in precisions if p != "fp32"]
    calibration = None
    if {"fp16", "int8"} & set(reduced):
        calibration, used = load_calibration_images(images.calibration, spec, len(images.calibration))
        if not used:
            raise ExportError(f"{images.calibration_source}: none of its images could be read to calibrate with")
    members = {VARIANT_FILES["fp32"]: fp32_bytes}
    members.update({VARIANT_FILES[p]: convert(fp32_bytes, p, calibration) for p in reduced})
    del calibration
    batch, used = load_calibration_images([s.path for s in images.gate], spec, len(images.gate))
    if not used:
        raise ExportError(f"{images.gate_source}: none of its images could be read to score the variants with")
    label_of = {s.path: s.label for s in images.gate}
    labels = np.array([label_of[path] for path in used])
    candidate = ModelPackage(Path(out), dataclasses.replace(
        manifest, variants={p: Variant(p, VARIANT_FILES[p]) for p in ("fp32", *reduced)}), members)
    scores = gate_variants(candidate, reduced, batch, labels, gate)
    passed = {s.precision: s for s in scores if s.passed}
    keep = [p for p in precisions if p == "fp32" or p in passed]
    if not keep:
        raise GateError(f"{out}: no variant passed the accuracy gate; nothing was written\n{format_table(scores)}")
    manifest.variants = {p: Variant(p, VARIANT_FILES[p], passed[p].figures if p in passed else {}) for p in keep}
    manifest.provenance["precision_variants"] = {
        **images.describe(),
        "gate_runtime": "ONNX Runtime, CPU",
        "refused": {s.precision: s.reasons for s in scores if not s.passed},
    }
    path = write_package(out, manifest, {VARIANT_FILES[p]: members[VARIANT_FILES[p]] for p in keep})
    return path, scores


def _image_paths(config: ExportConfig, train_config) -> tuple[list[str], str]:
    if config.calib_data:
        targets = [t.path for t in discover([config.calib_data]) if t.error is None]
        return targets, config.calib_data
    if train_config.val:
        return [s.path for s in load_samples(train_config.val, train_config.val_split)], train_config.val
    return [s.path for s in load_samples(train_config.data, train_config.split)], train_config.data


def export_run(config: ExportConfig) -> Path:
    """`export_run_report`, giving the path of the package written (variants that failed the accuracy gate are
    named under ``refused`` in its manifest's provenance ``precision_variants``)."""
    return export_run_report(config).path


def export_run_report(config: ExportConfig) -> ExportResult:
    """Export the run's inference network and write a verified package: LoRA merged and the image head only
    for DGS-Net runs; the prompted image encoder and the two class anchors for MiraGe runs.

    Parity images are the run's validation images, else its training images, or those under ``calib_data``. The
    run is read and checked (config, tensors, calibrated threshold) before anything is written. Reduced-precision
    variants (`add_variants`) are converted from the verified float32 graph and scored by the
    accuracy gate; the package holds those that pass (and fp32 if asked for), the result says which failed.
    """
    check_package_path(config.out, config.run)
    if config.batch != "dynamic" and not (config.batch.isdigit() and int(config.batch) > 0):
        raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {config.batch!r}")
    precisions = parse_precisions(",".join(config.precisions))
    run = RunFolder(config.run).load()
    train_config, spec, record = run.config, run.spec, run.record
    threshold, threshold_source = run_threshold(config.run)  # checked before anything is written
    image_sets = None
    if set(precisions) - {"fp32"}:  # chosen, and Model Optimizer looked for, before the long export starts
        image_sets = choose_image_sets(precisions, train_config, config.calib_data, config.calib_images,
                                       config.gate_images)
    paths, source = _image_paths(config, train_config)
    images = parity_images(paths, config.max_images)
    if not images:
        raise ExportError(f"{source}: no readable images to verify the export with (give some with --calib-data DIR)")
    provenance = dict(record.get("provenance", {}))
    provenance.update({
        "method": train_config.method,
        "run": Path(config.run).resolve().name,
        "stages": [f"{stage.name} x{stage.epochs} epochs" for stage in train_config.stages()],
        "parity_images": f"{len(images)} from {Path(source).name}",
    })
    architecture = {
        "arch": train_config.arch,
        "pretrained": train_config.pretrained,
        "quick_gelu": train_config.quick_gelu,
        "method": train_config.method,
        "input_size": spec.size,
        **train_config.method_runner().describe(),
    }
    with tempfile.TemporaryDirectory(prefix="dgs-export-") as tmp:
        fp32_only = precisions == ("fp32",)
        written = export_package(
            run.model.inference_model(),
            config.out if fp32_only else Path(tmp) / "fp32.dgs",
            spec,
            images,
            threshold=threshold,
            threshold_source=threshold_source,
            architecture=architecture,
            provenance=provenance,
            opset=config.opset,
            batch_size=None if config.batch == "dynamic" else int(config.batch),
        )
        if fp32_only:
            return ExportResult(Path(written))
        gate = GateConfig(max_auc_drop=config.max_auc_drop, min_agreement=config.min_agreement)
        path, scores = add_variants(written, config.out, precisions, image_sets, gate)
    return ExportResult(path, scores, image_sets)
