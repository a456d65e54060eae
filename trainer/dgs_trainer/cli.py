"""`dgs train` and `dgs caption`: thin layers over `dgs_trainer.train` and `dgs_trainer.captioning` (`dgs eval`
lives in `dgs_sdk.eval_cli` and calls `dgs_trainer.eval_run` for a run).

Errors are `DgsError`s, reported by the `dgs` group in one place (``Error: ...``, exit code 2).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import typing

import click

from .errors import ConfigError
from .flags import OptionFlag, config_from_flags, option_flags
from .methods import METHODS
from .run_folder import RunFolder

__all__ = ["caption_command", "train"]

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
    from .train import fit

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {dest: value for dest, value in flags.items() if value is not None}
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
        click.echo(f"\ninterrupted: continue with  dgs train --resume {resume_run or config.out}", err=True)
        sys.exit(130)
    click.echo(f"run written to {run}", err=True)


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
