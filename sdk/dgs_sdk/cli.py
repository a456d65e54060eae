"""The `dgs` command line: a thin layer that fills config dataclasses and calls library functions."""

from __future__ import annotations

import importlib
import os
import platform
import signal
import sys
import threading
from importlib import metadata

import click

from . import __version__, native
from .backends import BACKENDS, available_backends
from .bench_cli import bench_command
from .engine_cache import describe_engines
from .engine_cli import cache_group, engine_command
from .errors import DgsError
from .eval_cli import eval_command
from .explain_cli import explain_command
from .package import PRECISIONS

__all__ = ["main"]


# Verbs that live in the training and export packages, imported only when called, so that the SDK's own
# verbs work without torch. A missing extra turns into an error that names it.
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("dgs_trainer.cli", "train", "train"),
    "distill": ("dgs_trainer.cli", "distill", "train"),
    "caption": ("dgs_trainer.cli", "caption_command", "train"),
    "export": ("dgs_export.cli", "export_command", "export"),
    "demo": ("dgs_export.demo", "demo_command", "export"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        module, attribute, extra = LAZY_COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError as e:
            message = f"'dgs {name}' needs the {extra} extra: pip install 'dgs[{extra}]' ({e})"

            @click.command(name, help=f"(unavailable: pip install 'dgs[{extra}]')",
                           context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
            def unavailable() -> None:
                raise SetupError(message)

            return unavailable

    def invoke(self, ctx: click.Context):
        # The one place where errors meet the user: every error raised on purpose is a DgsError whose message
        # names the file or value at fault; a file system error names its file too. No traceback, exit code 2.
        try:
            return super().invoke(ctx)
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(143)
        except (DgsError, OSError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)


class SetupError(click.ClickException):
    """A problem with what the command was given (model, output path, device): exit code 2, no traceback."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that files being written are completed or removed."""


def _terminate(signum, frame) -> None:
    raise Terminated()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="dgs")
def main() -> None:
    """Detect AI-generated images: train detectors, evaluate them, scan folders with a .dgs model package."""
    # `kill` (SIGTERM) ends dgs the way Ctrl-C does: temporary files removed, rows written so far kept.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-m", "--model", required=True, help="Model package (.dgs) to score with.")
@click.option("-o", "--out", help="Write rows here: .csv or .jsonl (default: CSV on standard output).")
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Probability of 'fake' from which a file is labelled fake [default: the package's].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per inference call.")
@click.option("--workers", type=click.IntRange(min=1), help="Decoding threads [default: one per CPU, at most 8].")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into sub-folders.")
@click.option("--hidden", is_flag=True, help="Also scan files and folders whose names start with a dot.")
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symbolic links that lead out of the folders scanned [default: report them, unread].")
@click.option("--resume", is_flag=True, help="Continue an interrupted scan into its --out file: files that already "
              "have a row are skipped.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (once the first batch is scored).")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N [default: best available].")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True,
              help="Package variant to run; auto: the fastest the backend runs well (see README).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on standard error [default: on a terminal].")
@click.option("--provenance", is_flag=True, help="Also report provenance evidence beside the model's result: C2PA "
              "content credentials and generator metadata (EXIF, XMP, PNG text).")
@click.option("--provenance-overrides", is_flag=True, help="Label fake a file whose C2PA credentials are validly "
              "signed and say it was generated; label_source records it (implies --provenance).")
@click.option("--c2pa-trust-anchors", type=click.Path(dir_okay=False), help="PEM file of root certificates: C2PA "
              "signers that chain to one are 'trusted' (implies --provenance).")
def scan(paths, model, out, threshold, batch_size, workers, recursive, hidden, follow_symlinks, resume, overwrite,
         backend, device, precision, progress, provenance, provenance_overrides, c2pa_trust_anchors) -> None:
    """Score every image in PATHS (files, folders or glob patterns).

    Every file gets a row (path, probability, label, error), written a batch at a time; --provenance adds the
    columns label_source, c2pa, c2pa_signer, c2pa_generator, c2pa_source_type, metadata and provenance_detail.
    Exit code 0 when all files were scored, 1 when some could not be (their rows say why), 2 for a usage
    problem or when the results could not be written (the file then ends on a whole row), 130 or 143 when
    interrupted (rows written so far are kept; --resume continues).
    """
    from .provenance import c2pa_unavailable
    from .results import ResultsError
    from .scan import ScanConfig
    from .scan import scan as run_scan

    config = ScanConfig(
        paths=paths, model=model, out=out, threshold=threshold, batch_size=batch_size, workers=workers,
        recursive=recursive, hidden=hidden, follow_symlinks=follow_symlinks, resume=resume, overwrite=overwrite,
        backend=backend, device=device, precision=precision, progress=progress, provenance=provenance,
        provenance_overrides=provenance_overrides, c2pa_trust_anchors=c2pa_trust_anchors,
    )
    if config.reads_provenance and (missing := c2pa_unavailable()):
        click.echo(f"C2PA content credentials are not checked: {missing}; metadata is still read", err=True)
    if hasattr(sys.stdout, "reconfigure"):  # rows on stdout: file names that are not UTF-8 pass through as bytes
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        summary = run_scan(config)
    except (DgsError, ValueError) as e:
        if out is None and isinstance(e, ResultsError):  # standard output is gone: nothing more goes there
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SetupError(str(e)) from None
    except (KeyboardInterrupt, Terminated) as e:
        again = f"; continue with --resume --out {out}" if out else ""
        click.echo(f"interrupted: rows written so far are kept{again}", err=True)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    if summary.total == 0:
        click.echo("no image files found in " + ", ".join(paths), err=True)
    click.echo(summary.line(), err=True)
    if out:
        click.echo(f"results written to {out}", err=True)
    sys.exit(summary.exit_code)


main.add_command(eval_command)
main.add_command(bench_command)
main.add_command(explain_command)


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


@main.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
def info(model) -> None:
    """Versions, inference backends, execution providers and the native core; with MODEL, what a .dgs
    package holds (verified): its variants with their accuracy against fp32, and the one `auto` runs here."""
    if model:
        _package_info(model)
        return
    click.echo(f"dgs {__version__}")
    click.echo(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    distributions = ("numpy", "opencv-python-headless", "pillow", "onnxruntime", "onnxruntime-gpu", "click", "torch",
                     "open_clip_torch", "onnx", "tensorrt", "matplotlib", "c2pa-python")
    for dist in distributions:
        click.echo(f"  {dist}: {_version_of(dist)}")
    usable = available_backends()
    click.echo("backends: " + ", ".join(f"{name} ({'available' if name in usable else 'not available'})"
                                         for name in BACKENDS))
    for name in BACKENDS:
        if name not in usable:
            click.echo(f"  {name}: {BACKENDS[name].unavailable_reason()}")
    if "onnxruntime" in usable:
        from .backends.onnxruntime import OnnxRuntimeBackend

        click.echo("onnxruntime execution providers: " + ", ".join(OnnxRuntimeBackend.available_providers()))
    click.echo(native.status())
    for line in describe_engines():
        click.echo(line)


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _accuracy_line(figures: dict) -> str:
    """The accuracy gate's main figures of a variant (see dgs_export.accuracy_gate), in a few words."""
    if not figures:
        return ""
    parts = []
    if figures.get("auc") is not None:
        parts.append(f"AUC {figures['auc']:.4f}" + (f" (fp32 {figures['fp32_auc']:.4f})"
                                                     if figures.get("fp32_auc") is not None else ""))
    if figures.get("max_abs_delta_p") is not None:
        parts.append(f"max |dp| {figures['max_abs_delta_p']:.2g}")
    if figures.get("agreement") is not None:
        parts.append(f"labels as fp32 {figures['agreement']:.1%}")
    if figures.get("images"):
        parts.append(f"on {figures['images']} images")
    return "  vs fp32: " + ", ".join(parts) if parts else ""


def _package_info(model: str) -> None:
    from .backends import choose_backend
    from .package import ModelPackage

    package = ModelPackage.load(model)
    m = package.manifest
    click.echo(f"{model}: dgs model package, created {m.created or 'at an unknown time'}")
    architecture = ", ".join(f"{k} {_figure(v)}" for k, v in m.architecture.items() if not isinstance(v, dict))
    click.echo(f"  architecture: {architecture or 'not stated'}")
    spec = m.preprocess
    click.echo(f"  preprocessing: {spec.transform} at {spec.size} px (small images: {spec.small_images})")
    click.echo(f"  threshold: {m.threshold:.4g} ({m.threshold_source})")
    click.echo("  variants:")
    width = max(len(v.file) for v in m.variants.values())
    for precision, variant in m.variants.items():
        meta = m.files[variant.file]
        click.echo(f"    {precision:<9}{variant.file:<{width + 2}}{meta['size'] / 1e6:9.1f} MB  "
                   f"sha256 {meta['sha256'][:16]}" + _accuracy_line(variant.accuracy))
    try:
        backend, precision = choose_backend("auto", m, source=model)
        click.echo(f"  here, auto runs: {precision} with {backend.name}")
    except DgsError as e:
        click.echo(f"  here, no backend runs it: {e}")


main.add_command(engine_command)
main.add_command(cache_group)

if __name__ == "__main__":  # pragma: no cover
    main()
