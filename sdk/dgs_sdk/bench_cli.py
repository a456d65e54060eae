"""`dgs bench`: a thin layer over `dgs_sdk.bench`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .backends import BACKENDS
from .errors import EvaluationError
from .package import PRECISIONS

__all__ = ["bench_command"]


@click.command("bench")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--backend", default="auto", show_default=True,
              help=f"auto, all, or comma-separated names ({', '.join(BACKENDS)}).")
@click.option("--precision", default="auto", show_default=True,
              help=f"auto (each backend's choice), all, or comma-separated variants ({', '.join(PRECISIONS)}).")
@click.option("--batch", default="1,8,32", show_default=True, help="Batch sizes to time, comma-separated.")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Time preprocessing on up to 16 images of this folder [default: generated 1024x768 JPEG photos].")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Time each measurement for about this long, at least 3 runs [default: 2].")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Time each measurement over exactly this many runs instead.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed runs before each inference measurement.")
@click.option("--device", help="cpu, cuda or cuda:N [default: best available].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the measurements as JSON here.")
def bench_command(model, backend, precision, batch, images, seconds, iterations, warmup, device, json_out) -> None:
    """Latency and throughput of MODEL (a .dgs package) per backend, precision variant and batch size, with
    preprocessing (decode, crop or patch selection, normalisation) timed apart.

    Latency is one inference call (p50, p95 over the timed runs; at batch 1, per image), throughput is images per
    second; warm-up runs are excluded. Combinations that cannot run here are listed with the reason.
    """
    from .bench import BenchConfig, benchmark, parse_batches, parse_list

    if seconds is not None and iterations is not None:
        raise EvaluationError("--seconds and --iterations both bound a measurement; give one of them")
    if json_out and not Path(json_out).resolve().parent.is_dir():
        raise EvaluationError(f"{json_out}: cannot write the measurements, its folder does not exist")
    config = BenchConfig(
        model=model, backends=parse_list(backend, tuple(BACKENDS), "--backend"),
        precisions=parse_list(precision, PRECISIONS, "--precision"), batches=parse_batches(batch), images=images,
        seconds=2.0 if seconds is None else seconds, iterations=iterations, warmup=warmup, device=device,
    )
    report = benchmark(config)
    click.echo(report.table())
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2))
