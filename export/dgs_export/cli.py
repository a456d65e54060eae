"""`dgs export`: a thin layer over `dgs_export.run_export`."""

from __future__ import annotations

import click

from dgs_sdk.package import PRECISIONS, ModelPackage

from .accuracy_gate import DEFAULT_MAX_AUC_DROP, DEFAULT_MIN_AGREEMENT, format_table
from .onnx_export import DEFAULT_OPSET
from .precision import DEFAULT_CALIBRATION_IMAGES
from .run_export import DEFAULT_GATE_IMAGES, ExportConfig, export_run_report, parse_precisions

__all__ = ["export_command"]


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Model package to write (.dgs).")
@click.option("--opset", type=click.IntRange(min=14, max=21), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset (14 to 21).")
@click.option("--batch", default="dynamic", show_default=True, help="dynamic, or a fixed batch size K.")
@click.option("--precision", "precisions", default="fp32", show_default=True,
              help=f"Variants to write, comma-separated, from {', '.join(PRECISIONS)}: fp16 for GPUs (AutoCast), "
              "int8 for TensorRT (Q/DQ, calibrated), int8-cpu for ONNX Runtime on CPUs (dynamic INT8). fp16 and "
              'int8 need NVIDIA Model Optimizer: pip install "dgs[quantize]".')
@click.option("--calib-data", type=click.Path(exists=True), help="Images (labelled or not) that calibrate the fp16 "
              "and int8 variants and verify the export [default: the run's training images calibrate; its "
              "validation, else training, images verify].")
@click.option("--calib-images", type=click.IntRange(min=1), default=DEFAULT_CALIBRATION_IMAGES, show_default=True,
              help="At most this many images calibrate. NVIDIA recommends at least 500 for vision transformers: "
              "fewer give INT8 ranges that change with the images drawn.")
@click.option("--gate-images", type=click.IntRange(min=1), default=DEFAULT_GATE_IMAGES, show_default=True,
              help="At most this many held-out labelled images score the variants in the accuracy gate.")
@click.option("--max-auc-drop", type=click.FloatRange(min=0, max=1), default=DEFAULT_MAX_AUC_DROP, show_default=True,
              help="Accuracy gate: a variant whose AUC is more than this below fp32's is not written.")
@click.option("--min-agreement", type=click.FloatRange(min=0, max=1), default=DEFAULT_MIN_AGREEMENT,
              show_default=True, help="Accuracy gate: a variant whose labels equal fp32's on fewer than this share "
              "of the images is not written.")
@click.option("--max-images", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images used for the parity check with torch.")
def export_command(run, out, opset, batch, precisions, calib_data, calib_images, gate_images, max_auc_drop,
                   min_agreement, max_images) -> None:
    """Export a training run to a verified .dgs model package (ONNX + manifest).

    The graph is the image encoder with LoRA merged in and the image head; its output is the logit of "fake".
    ONNX Runtime must reproduce torch's probabilities on real images to 1e-4, else nothing is written.

    Each reduced-precision variant is scored against fp32 on held-out labelled images with ONNX Runtime on the
    CPU (the accuracy gate); those that fail are left out of the package, their figures are shown and the
    command exits with 1. TensorRT's kernels round differently from ONNX Runtime's: check a package on the
    device with `dgs eval MODEL.dgs --backend tensorrt`.
    """
    config = ExportConfig(run=run, out=out, opset=opset, batch=batch, calib_data=calib_data, max_images=max_images,
                          precisions=parse_precisions(precisions), calib_images=calib_images, gate_images=gate_images,
                          max_auc_drop=max_auc_drop, min_agreement=min_agreement)
    result = export_run_report(config)
    manifest = ModelPackage.load(result.path).manifest
    parity = manifest.provenance["parity"]
    click.echo(f"parity with torch: max |probability difference| {parity['max_abs_probability_diff']:.2e} on "
               f"{parity['images']} images (tolerance {parity['tolerance']:.0e})", err=True)
    if result.images is not None:
        click.echo(f"calibration: {result.images.describe()['calibration']}", err=True)
        click.echo(f"accuracy gate: {result.images.describe()['gate']}"
                   + (" (the same images as calibration: no others were there)" if result.images.overlap else ""),
                   err=True)
    if result.scores:
        click.echo(format_table(result.scores), err=True)
    click.echo(f"wrote {result.path} with variants {', '.join(manifest.variants)}", err=True)
    if result.refused:
        click.echo(f"Error: {', '.join(result.refused)} failed the accuracy gate and were not written", err=True)
        raise SystemExit(1)
