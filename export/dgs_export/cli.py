"""`dgs export`: a thin layer over `dgs_export.run_export`."""

from __future__ import annotations

import click

from dgs_sdk.package import ModelPackage

from .onnx_export import DEFAULT_OPSET
from .run_export import ExportConfig, export_run

__all__ = ["export_command"]


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Model package to write (.dgs).")
@click.option("--opset", type=click.IntRange(min=14, max=21), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset (14 to 21).")
@click.option("--batch", default="dynamic", show_default=True, help="dynamic, or a fixed batch size K.")
@click.option("--calib", type=click.Path(exists=True), help="Images to verify the export with [default: the run's "
              "validation images, else its training images].")
@click.option("--max-images", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images used for the parity check.")
def export_command(run, out, opset, batch, calib, max_images) -> None:
    """Export a training run to a verified .dgs model package (ONNX + manifest).

    The graph is the image encoder with LoRA merged in and the image head; its output is the logit of "fake".
    ONNX Runtime must reproduce torch's probabilities on real images to 1e-4, else nothing is written.
    """
    path = export_run(ExportConfig(run=run, out=out, opset=opset, batch=batch, calib=calib, max_images=max_images))
    parity = ModelPackage.load(path).manifest.provenance["parity"]
    click.echo(f"parity with torch: max |probability difference| {parity['max_abs_probability_diff']:.2e} on "
               f"{parity['images']} images (tolerance {parity['tolerance']:.0e})", err=True)
    click.echo(f"wrote {path}", err=True)
