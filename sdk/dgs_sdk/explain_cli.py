"""`dgs explain`: a thin layer that fills `ExplainConfig` and calls `explain`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .backends import BACKENDS
from .detector import Detector
from .explain import Explanation, check_output_folder, explain_image, write_explanation
from .image import load_image
from .occlusion import OcclusionSettings
from .package import PRECISIONS

__all__ = ["ExplainConfig", "explain", "explain_command"]


@dataclass(frozen=True)
class ExplainConfig:
    """What `dgs explain` was asked: one image, one package, an output folder and how to run and mask."""

    image: str
    model: str
    out: str
    occlusion: OcclusionSettings = OcclusionSettings()
    threshold: float | None = None
    backend: str = "auto"
    device: str | None = None
    precision: str = "auto"


def explain(config: ExplainConfig) -> tuple[Explanation, list[Path]]:
    """Explain ``config.image``'s score and write the figures and ``explain.json`` into ``config.out``.

    What can be checked cheaply is checked before the model is loaded: matplotlib, the output folder, the image.

    Raises:
        DgsError: the image, the package, the options or the output folder cannot be used (the message names it).
    """
    from .explain_figures import require_matplotlib

    require_matplotlib()
    check_output_folder(config.out, (config.model, config.image))
    image = load_image(config.image)
    detector = Detector(config.model, backend=config.backend, device=config.device, precision=config.precision)
    explanation = explain_image(detector, image, config.occlusion, threshold=config.threshold, name=config.image)
    return explanation, write_explanation(explanation, config.out)


@click.command("explain")
@click.argument("image")
@click.option("-m", "--model", required=True, help="Model package (.dgs) to explain the score of.")
@click.option("-o", "--out", required=True, help="Folder to write the figures and explain.json to (created if "
              "missing; an earlier explanation there is replaced).")
@click.option("--window", type=click.IntRange(min=1),
              help="Side of the masked square, in model-input pixels [default: the patch size for patch-select, "
                   "size / 7 for clip].")
@click.option("--stride", type=click.IntRange(min=1), help="Step between masked squares [default: half the window].")
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Probability of 'fake' from which the image is labelled fake [default: the package's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Masked inputs per inference call.")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N [default: best available].")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True,
              help="Package variant to run; auto: the fastest the backend runs well.")
def explain_command(image, model, out, window, stride, threshold, batch_size, backend, device, precision) -> None:
    """Why IMAGE got its score: figures a person can read, and explain.json.

    occlusion.png: the model input and an occlusion map over it (how much the logit of 'fake' drops when each
    region is masked with the mean colour). patches.png, for patch-select models: the selected patches
    outlined on the image (low and high spectral entropy in two colours) and the mosaic the model saw.
    explain.json: probability, logit, label, threshold, the package variant, the patches' coordinates and
    the occlusion grid. Exit code 0, or 2 when the image, the package or the output folder cannot be used.
    """
    config = ExplainConfig(image=image, model=model, out=out, threshold=threshold, backend=backend, device=device,
                           precision=precision,
                           occlusion=OcclusionSettings(window=window, stride=stride, batch_size=batch_size))
    explanation, written = explain(config)
    if hasattr(sys.stdout, "reconfigure"):  # file names that are not UTF-8 pass through as bytes, as dgs scan's
        sys.stdout.reconfigure(errors="surrogateescape")
    e = explanation
    click.echo(f"{image}: P(fake) = {e.probability:.4f} (logit {e.logit:+.4f}), {e.label} at threshold "
               f"{e.threshold:.4g}")
    for path in written:
        click.echo(f"wrote {path}")
