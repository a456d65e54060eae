"""`dgs engine` (build a TensorRT engine ahead of time) and `dgs cache` (list or clear the engine cache and the
teacher outputs of `dgs distill`)."""

from __future__ import annotations

from pathlib import Path

import click

from .engine_cache import TEACHER_OUTPUTS_DIR, BatchProfile, EngineCache, cache_dir, describe_engines

__all__ = ["cache_group", "engine_command"]


def _profile(ctx, param, value: str | None) -> BatchProfile | None:
    if value is None:
        return None
    try:
        return BatchProfile.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--precision", type=click.Choice(["auto", "int8", "fp16", "fp32"]), default="auto", show_default=True,
              help="Variant to build; auto: the fastest the package has (int8, fp16, fp32).")
@click.option("--batch", callback=_profile, metavar="MIN:OPT:MAX",
              help="Batch sizes of the optimisation profile [default: 1:32:32; K:K:K for a graph of fixed batch K].")
@click.option("--device", help="cuda or cuda:N [default: cuda:0].")
@click.option("--workspace", type=click.IntRange(min=1), default=1024, show_default=True, metavar="MIB",
              help="Builder workspace limit in MiB.")
def engine_command(model, precision, batch, device, workspace) -> None:
    """Build the TensorRT engine of MODEL (.dgs) on this GPU, or find it in the cache, and print its path.

    Scans and evaluations with --backend tensorrt then load it instead of building one: they take the newest
    engine built for the package's variant on this GPU, whatever its --batch and --workspace.
    """
    from .backends import choose_backend
    from .backends.tensorrt import EngineOptions, TensorRTBackend, prepare_engine
    from .package import ModelPackage, read_manifest

    # The variant is chosen from the manifest first, so that only it is read into memory (a Jetson's is small).
    _, precision = choose_backend(TensorRTBackend.name, read_manifest(model), device, precision, model)
    package = ModelPackage.load(model, precision=precision)
    backend = prepare_engine(package, precision, device, EngineOptions(profile=batch, workspace_mib=workspace))
    entry = backend.entry
    click.echo(f"engine: {entry.plan}")
    how = f"built in {entry.build_seconds:.1f} s" if backend.built else \
        f"found in the cache (built {entry.built} in {entry.build_seconds:.1f} s)"
    click.echo(f"  {how}: TensorRT {backend.tensorrt_version}, {backend.gpu.name} (compute capability "
               f"{backend.gpu.compute_capability}, CUDA {backend.gpu.driver}), {backend.precision}, batch "
               f"{backend.profile}, workspace {entry.fields['workspace_mib']} MiB, {entry.plan_bytes / 1e6:.1f} MB")


@click.group("cache")
def cache_group() -> None:
    """dgs's cache ($DGS_CACHE_DIR, else $XDG_CACHE_HOME/dgs, else ~/.cache/dgs): TensorRT engines, and the teacher
    outputs that dgs distill keeps."""


def _teacher_outputs() -> tuple[Path, list[Path]]:
    folder = cache_dir() / TEACHER_OUTPUTS_DIR
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.is_symlink()) if folder.is_dir() else []
    return folder, files


@cache_group.command("list")
def cache_list() -> None:
    """List the cached engines and teacher outputs."""
    for line in describe_engines():
        click.echo(line)
    folder, files = _teacher_outputs()
    click.echo(f"teacher outputs of dgs distill in {folder}: {len(files) or 'none'}")
    for path in files:
        click.echo(f"  {path.name}, {path.stat().st_size / 1e6:.1f} MB")


@cache_group.command("clear")
def cache_clear() -> None:
    """Remove every cached engine and timing cache (engines being built by another process are kept), and the
    teacher outputs dgs distill keeps."""
    cache = EngineCache()
    removed = cache.clear()
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"{len(removed)} file(s) removed from {cache.folder}" if removed else f"nothing to remove in "
               f"{cache.folder}")
    folder, files = _teacher_outputs()
    for path in files:
        path.unlink(missing_ok=True)
        click.echo(f"removed {path}")
    if files:
        click.echo(f"{len(files)} teacher output file(s) removed from {folder}")
