"""`dgs train` and `dgs eval`: thin layers over `dgs_trainer.train` and `dgs_trainer.evaluate`."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

import click

from .config import METHODS, TrainConfig, TrainError
from .data import DataLayoutError
from .run_folder import RunFolder

__all__ = ["train", "eval_command"]

# Help for each TrainConfig field; the flags themselves are generated from the dataclass, defaults included.
TRAIN_HELP = {
    "data": "Training data root (folder layouts: ForenSynths, GenImage, real/fake) or a CSV manifest.",
    "out": "Run folder to create.",
    "method": "probe (linear probe), lora (LoRA + head), dgs (DGS-Net: probe, then LoRA with gradient surgery) "
              "or mirage (MiraGe: multimodal deep prompts, CE + supervised contrastive loss).",
    "arch": "open_clip model name, e.g. ViT-L-14, ViT-B-16, or dgs-tiny-vit.",
    "pretrained": "open_clip pretrained tag (openai), a local checkpoint path, or none.",
    "val": "Validation data root, scored after every epoch.",
    "split": "Only images under a folder of this name in --data (e.g. train for GenImage).",
    "val_split": "Only images under a folder of this name in --val (e.g. val for GenImage).",
    "epochs": "Epochs of the method's own stage [default: probe 3, lora 1, dgs 1, mirage 5].",
    "probe_epochs": "DGS-Net stage-1 probe epochs.",
    "batch_size": "Images per batch.",
    "accumulate": "Batches whose gradients are summed per optimizer step.",
    "lr": "Learning rate [default: 1e-4 (Adam) for probe, lora and dgs; 3.5e-3 (SGD) for mirage].",
    "beta1": "Adam beta1 (probe, lora, dgs).",
    "beta2": "Adam beta2 (probe, lora, dgs).",
    "lora_rank": "LoRA rank r.",
    "lora_alpha": "LoRA alpha (updates scaled by alpha / r).",
    "lora_dropout": "Dropout on the input of the LoRA path.",
    "lora_targets": "Comma-separated projections to adapt, of q, k, v.",
    "lora_blocks": "Comma-separated vision block indices to adapt, or all.",
    "help_weight": "lambda, weight of DGS-Net's prior-alignment loss.",
    "prompt_tokens": "MiraGe: learnable context tokens per prompted layer.",
    "prompt_depth": "MiraGe: text and vision layers that get prompts (1 = shallow prompts only, the ablation).",
    "prompt_context": "MiraGe: phrase whose first words initialise the layer-0 text context.",
    "dis_weight": "MiraGe: alpha, weight of the discriminative loss L_dis (0 = CE only, the ablation).",
    "memory_size": "MiraGe: embeddings in the FIFO memory bank of L_dis (0 = no memory bank, the ablation).",
    "temperature": "MiraGe: temperature tau of L_dis.",
    "momentum": "MiraGe: SGD momentum.",
    "weight_decay": "MiraGe: SGD weight decay.",
    "warmup_epochs": "MiraGe: epochs at --warmup-lr before the cosine schedule starts.",
    "warmup_lr": "MiraGe: constant learning rate of the warm-up epochs.",
    "captions": "JSON file mapping image paths to captions (DGS-Net's text branch).",
    "caption_template": "Caption for images without one; {label} becomes real or fake.",
    "preprocess": "patch-select or clip [default: patch-select for probe, lora and dgs; clip for mirage].",
    "hflip": "Random horizontal flips at train time.",
    "device": "auto, cpu, cuda or cuda:N.",
    "workers": "DataLoader worker processes that decode images.",
    "seed": "Seed of data order, augmentation and initialisation.",
    "save_every": "Also checkpoint every N optimizer steps (0: at the end of each epoch only).",
    "tensorboard": "Also write a TensorBoard log (needs tensorboard installed).",
}


def _train_options(command):
    """Add one click option per TrainConfig field, typed and defaulted from the dataclass."""
    hints = typing.get_type_hints(TrainConfig)
    for field in reversed(dataclasses.fields(TrainConfig)):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        required = field.default is dataclasses.MISSING
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        kwargs = {"help": TRAIN_HELP[field.name], "show_default": not required and field.default is not None}
        if base is bool:
            option = click.option(f"{flag}/--no-{flag[2:]}", field.name, default=field.default, **kwargs)
        elif field.name == "method":
            option = click.option(flag, field.name, type=click.Choice(METHODS), default=field.default, **kwargs)
        else:
            default = None if required else field.default
            option = click.option(flag, field.name, type=base, default=default, required=False, **kwargs)
        command = option(command)
    return command


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


@click.command()
@_train_options
@click.option("--resume", "resume_run", type=click.Path(file_okay=False),
              help="Continue an interrupted run from its last checkpoint (its config.json is used).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(resume_run, progress, **fields) -> None:
    """Train a detector into a run folder (config, checkpoints, metrics)."""
    from .train import fit

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if resume_run:
            config = RunFolder(resume_run).read_config()
        else:
            if not fields["data"] or not fields["out"]:
                _fail("--data and --out are required (or --resume RUN)")
            config = TrainConfig(**fields)
        run = fit(config, resume=bool(resume_run), progress=progress)
    except (TrainError, DataLayoutError, ValueError, OSError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: continue with  dgs train --resume {resume_run or fields['out']}", err=True)
        sys.exit(130)
    click.echo(f"run written to {run}", err=True)


@click.command("eval")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, help="Labelled data root or CSV manifest to evaluate on.")
@click.option("--split", help="Only images under a folder of this name (e.g. val).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold [default: the run's calibrated threshold, else 0.5].")
@click.option("--calibrate", is_flag=True,
              help="Choose the threshold that maximises balanced accuracy on --data and store it in the run "
                   "(use validation data, never the test set).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the metrics as JSON here.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
def eval_command(run, data, split, threshold, calibrate, json_out, batch_size, device, workers) -> None:
    """Accuracy, real/fake accuracy, AP and ROC-AUC of a run, per generator and on average."""
    from .eval_run import EvalConfig, evaluate_run
    from .evaluate import format_table

    config = EvalConfig(run=run, data=data, split=split, threshold=threshold, calibrate=calibrate,
                        batch_size=batch_size, device=device, workers=workers)
    if json_out and not Path(json_out).resolve().parent.is_dir():
        _fail(f"{json_out}: cannot write the metrics, its folder does not exist")
    owned = RunFolder(run).entry_holding(json_out) if json_out else None
    if owned:
        _fail(f"--json {json_out}: {owned} belongs to the run, the metrics cannot be written over it or into it")
    try:
        report = evaluate_run(config)
    except (TrainError, DataLayoutError, ValueError, OSError) as e:
        _fail(str(e))
    click.echo(format_table(report["metrics"]))
    oracle = report["oracle_threshold"]
    click.echo(f"threshold {report['threshold']:.4f} ({report['threshold_source']}); " + (
        f"oracle threshold on this data {oracle:.4f} (balanced accuracy {report['oracle_balanced_accuracy']:.4f})"
        if oracle is not None else "no oracle threshold (the data holds one class only)"))
    if report["unreadable"]:
        click.echo(f"{report['unreadable']} unreadable images were skipped", err=True)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))


# `dgs caption`: help for each CaptionConfig field but data (the argument); flags and defaults come from the dataclass.
CAPTION_HELP = {
    "out": "JSON file of captions {image path: caption}; an existing one is continued, its captions kept.",
    "split": "Only images under a folder of this name in DATA (e.g. train for GenImage).",
    "arch": "open_clip CoCa model name.",
    "pretrained": "open_clip pretrained tag of --arch, or a local checkpoint path.",
    "batch_size": "Images captioned together.",
    "device": "auto, cpu, cuda or cuda:N.",
    "workers": "DataLoader worker processes that decode images.",
    "beams": "Beam width of the caption search (1: greedy).",
    "max_tokens": "Most tokens in a caption; a longer one is cut there.",
    "min_tokens": "Fewest tokens before a caption may end.",
    "length_penalty": "Exponent of the length normalisation of caption scores (larger: longer captions).",
    "save_every": "Seconds between rewrites of --out while captioning (0: after every batch).",
}


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
        kwargs = {"type": base, "help": CAPTION_HELP[field.name]}
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
    import logging
    import sys

    from dgs_sdk.errors import DgsError

    from .captioning import CaptionConfig, caption_images
    from .data import DataLayoutError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = caption_images(CaptionConfig(data=data, **fields), progress=progress)
    except (DgsError, DataLayoutError) as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
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
