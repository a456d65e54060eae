"""`dgs train` and `dgs caption`: thin layers over `dgs_trainer.train` and `dgs_trainer.captioning` (`dgs eval`
lives in `dgs_sdk.eval_cli` and calls `dgs_trainer.eval_run` for a run).

Errors are `DgsError`s, reported by the `dgs` group in one place (``Error: ...``, exit code 2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import typing

import click

from .errors import ConfigError
from .flags import OptionFlag, config_from_flags, option_flags
from .methods import METHODS
from .run_folder import RunFolder

__all__ = ["caption_command", "distill", "train"]

# Settings that may change when a run is resumed (where and how fast it runs, not what it learns).
RESUMABLE_OVERRIDES = ("device", "workers")


def _shown_default(flag: OptionFlag) -> str:
    values = [(method, default) for method, default in flag.defaults if default is not None]
    if not values:
        return ""

    def spelled(value) -> str:
        if isinstance(value, bool):
            return flag.dest.replace("_", "-") if value else "no-" + flag.dest.replace("_", "-")
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)

    if len({spelled(v) for _, v in values}) == 1:
        shown = spelled(values[0][1])
    else:
        shown = ", ".join(f"{method} {spelled(value)}" for method, value in values)
    return f" [default: {shown}]"


def _click_option(flag: OptionFlag):
    kinds = [k for k in typing.get_args(flag.kind) or (flag.kind,) if k is not type(None)]
    kind = kinds[0]
    help_text = flag.help + _shown_default(flag)
    if flag.methods and len(flag.methods) < len(METHODS):
        help_text += f" ({', '.join(flag.methods)})"
    if kind is bool:
        return click.option(f"{flag.flag}/--no-{flag.flag[2:]}", flag.dest, default=None, help=help_text)
    if flag.dest == "method":
        choices = "; ".join(f"{name}: {method.summary}" for name, method in METHODS.items())
        return click.option(flag.flag, flag.dest, type=click.Choice(list(METHODS)), default=None,
                            help=f"{choices}.{_shown_default(flag)}")
    if flag.choices:
        return click.option(flag.flag, flag.dest, type=click.Choice(flag.choices), default=None, help=help_text)
    click_type = kind if kind in (int, float) else str  # lists are given comma-separated
    return click.option(flag.flag, flag.dest, type=click_type, default=None, help=help_text)


def _train_options(command):
    """One click option per config key (the run's settings, then every method's options), from the dataclasses."""
    for flag in reversed(option_flags()):
        command = _click_option(flag)(command)
    return command


# `dgs distill` takes these as its argument and --student, and fixes the method.
DISTILL_OWN = ("method", "arch", "teacher")


def _distill_options(command):
    """The run's settings and distillation's options, as `dgs train` spells them."""
    for flag in reversed(option_flags()):
        if flag.dest not in DISTILL_OWN and (not flag.methods or "distill" in flag.methods):
            command = _click_option(flag)(command)
    return command


def _fit(config_file, resume_run, progress, given) -> None:
    """Train the run the flags describe, or continue ``resume_run``."""
    from .train import fit

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if resume_run:
        refused = sorted(set(given) - set(RESUMABLE_OVERRIDES)) + (["config"] if config_file else [])
        if refused:
            raise ConfigError(f"--resume continues a run with its own settings; --{refused[0].replace('_', '-')} "
                              f"cannot change them (only --device and --workers can)")
        config = RunFolder(resume_run).read_config()
        config = dataclasses.replace(config, **given)
    else:
        config = config_from_flags(given, config_file)
    try:
        run = fit(config, resume=bool(resume_run), progress=progress)
    except KeyboardInterrupt:
        command = "distill" if config.method == "distill" else "train"
        click.echo(f"\ninterrupted: continue with  dgs {command} --resume {resume_run or config.out}", err=True)
        sys.exit(130)
    click.echo(f"run written to {run}", err=True)


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML or JSON file with the run's settings, nested as a run's config.json holds them (a run's "
                   "config.json itself works); flags given override it.")
@_train_options
@click.option("--resume", "resume_run", type=click.Path(file_okay=False),
              help="Continue an interrupted run from its last checkpoint, with its config.json (only --device and "
                   "--workers may change).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(config_file, resume_run, progress, **flags) -> None:
    """Train a detector into a run folder (config, checkpoints, metrics).

    Defaults are each method's published recipe; see the README for where each setting comes from.
    """
    _fit(config_file, resume_run, progress, {dest: value for dest, value in flags.items() if value is not None})


@click.command()
@click.argument("teacher", metavar="TEACHER_RUN_OR_MODEL", required=False)
@click.option("--student", help="open_clip architecture of the student, e.g. ViT-B-32, MobileCLIP2-S0, "
                                "timm-convnext_atto (a timm backbone), dgs-micro-vit.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML or JSON file with the run's settings (as for dgs train); flags given override it.")
@_distill_options
@click.option("--resume", "resume_run", type=click.Path(file_okay=False),
              help="Continue an interrupted distillation from its last checkpoint (only --device and --workers may "
                   "change; the teacher must still be where it was).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def distill(teacher, student, config_file, resume_run, progress, **flags) -> None:
    """Distil a trained detector, TEACHER (a run folder or a .dgs model package), into a smaller student: a new
    run folder that dgs eval, dgs export and dgs scan take like any other.

    The student is fed the teacher's preprocessing (transform, input size, small-image policy and normalisation;
    it is built at the teacher's input size). Loss: BCE on the labels plus the soft-target term on the teacher's
    logits, optionally matching the teacher's image embedding; the teacher's outputs are cached on disk.
    """
    given = {dest: value for dest, value in flags.items() if value is not None}
    if resume_run:
        if teacher or student:
            raise ConfigError("--resume continues a distillation with its own teacher and student; give neither")
        _fit(config_file, resume_run, progress, given)
        return
    if not teacher:
        raise ConfigError("give the TEACHER (a finished run folder or a .dgs model package), or --resume RUN")
    from .teacher import teacher_spec

    spec = teacher_spec(teacher)
    teacher_given = {"preprocess": spec.transform, "image_size": spec.size}
    if spec.transform == "patch-select":
        teacher_given["small_images"] = spec.small_images
    for dest, value in teacher_given.items():
        if dest in given and given[dest] != value:
            raise ConfigError(f"--{dest.replace('_', '-')} {given[dest]}: the teacher {teacher} takes {value}; a "
                              "student is fed its teacher's preprocessing")
    given.update(teacher_given, method="distill", teacher=os.path.abspath(teacher))
    if student:
        given["arch"] = student
    elif not config_file:
        raise ConfigError("--student is required: the student's open_clip architecture, e.g. ViT-B-32")
    _fit(config_file, None, progress, given)


# `dgs caption`: help for each CaptionConfig field but data (the argument); flags and defaults come from the dataclass.
def _caption_options(command):
    """One click option per CaptionConfig field but data, typed and defaulted from the dataclass."""
    import dataclasses
    import typing

    from .captioning import CaptionConfig

    hints = typing.get_type_hints(CaptionConfig)
    for field in reversed(dataclasses.fields(CaptionConfig)):
        if field.name == "data":
            continue
        base = next((t for t in typing.get_args(hints[field.name]) if t is not type(None)), hints[field.name])
        kwargs = {"type": base, "help": field.metadata["help"]}
        if field.default is dataclasses.MISSING:
            kwargs["required"] = True  # no default at all: click 8.3+ takes default=None as a given value
        else:
            kwargs.update(default=field.default, show_default=field.default is not None)
        command = click.option("--" + field.name.replace("_", "-"), field.name, **kwargs)(command)
    return command


@click.command("caption")
@click.argument("data")
@_caption_options
@click.option("--progress/--no-progress", default=True, show_default=True)
def caption_command(data, progress, **fields) -> None:
    """Caption every image of DATA with a CoCa model, for DGS-Net's text branch (--captions of dgs train).

    DATA is a data root (ForenSynths, GenImage or real/fake folders) or a CSV manifest. --out is rewritten every
    --save-every seconds, at the end and when interrupted; running the same command again captions only the
    images still without a caption. Unreadable images are skipped and counted. Exit code 2 for a usage problem,
    130 or 143 when interrupted.
    """
    from .captioning import CaptionConfig, caption_images

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = caption_images(CaptionConfig(data=data, **fields), progress=progress)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: captions finished so far are in {fields['out']}; run the same command again "
                   "to caption the rest", err=True)
        sys.exit(130)
    message = f"{summary.captioned} images captioned into {summary.out}"
    if summary.kept:
        message += f" ({summary.kept} already had a caption and kept it)"
    click.echo(message, err=True)
    if summary.unreadable:
        click.echo(f"{summary.unreadable} unreadable images were skipped and have no caption (e.g. {summary.example})",
                   err=True)
