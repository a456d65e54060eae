"""`dgs export`: a finished training run -> a verified `.dgs` model package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgs_sdk.data import load_samples
from dgs_sdk.errors import DgsError
from dgs_sdk.image import load_image
from dgs_sdk.scan import discover
from dgs_trainer.eval_run import run_threshold
from dgs_trainer.run_folder import RunFolder

from .onnx_export import DEFAULT_OPSET, ExportError, export_package

__all__ = ["PACKAGE_SUFFIX", "ExportConfig", "check_package_path", "parity_images", "export_run"]

PACKAGE_SUFFIX = ".dgs"


@dataclass
class ExportConfig:
    """What `dgs export` takes."""

    run: str
    out: str
    opset: int = DEFAULT_OPSET
    batch: str = "dynamic"
    calib: str | None = None
    max_images: int = 32


def parity_images(paths: list[str], limit: int) -> list[np.ndarray]:
    """Up to ``limit`` decodable images spread evenly over ``paths`` (unreadable ones are passed over)."""
    if len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    images = []
    for path in paths:
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


def _image_paths(config: ExportConfig, train_config) -> tuple[list[str], str]:
    if config.calib:
        targets = [t.path for t in discover([config.calib]) if t.error is None]
        return targets, config.calib
    if train_config.val:
        return [s.path for s in load_samples(train_config.val, train_config.val_split)], train_config.val
    return [s.path for s in load_samples(train_config.data, train_config.split)], train_config.data


def export_run(config: ExportConfig) -> Path:
    """Export the run's inference network and write a verified package: LoRA merged and the image head only
    for DGS-Net runs; the prompted image encoder and the two class anchors for MiraGe runs.

    Parity images are the run's validation images, else its training images, or those under ``calib``. The run is
    read and checked (config, tensors, calibrated threshold) before anything is written.
    """
    check_package_path(config.out, config.run)
    if config.batch != "dynamic" and not (config.batch.isdigit() and int(config.batch) > 0):
        raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {config.batch!r}")
    run = RunFolder(config.run).load()
    train_config, spec, record = run.config, run.spec, run.record
    threshold, threshold_source = run_threshold(config.run)  # checked before anything is written
    paths, source = _image_paths(config, train_config)
    images = parity_images(paths, config.max_images)
    if not images:
        raise ExportError(f"{source}: no readable images to verify the export with (give some with --calib DIR)")
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
    return export_package(
        run.model.inference_model(),
        config.out,
        spec,
        images,
        threshold=threshold,
        threshold_source=threshold_source,
        architecture=architecture,
        provenance=provenance,
        opset=config.opset,
        batch_size=None if config.batch == "dynamic" else int(config.batch),
    )
