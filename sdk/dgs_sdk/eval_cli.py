"""`dgs eval`: a training run (scored with torch, `dgs_trainer.eval_run`) or a `.dgs` model package (scored as
deployed, `dgs_sdk.evaluation`) on labelled data; one table, one report shape for both."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import click

from .backends import BACKENDS
from .errors import EvaluationError
from .package import PRECISIONS

__all__ = ["eval_command", "format_report"]

# Options that only one kind of target takes: flag -> what it is for.
RUN_ONLY = {
    "calibrate": "--calibrate stores a threshold in a training run; a package's threshold was fixed when it was "
                 "exported (calibrate the run, then dgs export it)",
    "tta": "--tta averages a training run over shuffled mosaic orders; a package scores the one order it deploys",
}
PACKAGE_ONLY = {
    "precision": "--precision picks a model package's variant; a training run is scored with torch in float32 "
                 "(export it to evaluate its variants)",
    "backend": "--backend picks a model package's runtime; a training run is scored with torch "
               "(export it to evaluate it with a backend)",
}


def _eval_run_module():
    """`dgs_trainer.eval_run`, imported only when a run is evaluated."""
    try:
        return importlib.import_module("dgs_trainer.eval_run")
    except ImportError as e:
        raise EvaluationError(f"evaluating a training run needs the train extra: pip install 'dgs[train]' ({e}); a "
                              "model package (.dgs) is evaluated without it") from None


def format_report(report: dict[str, Any]) -> str:
    """The lines `dgs eval` prints: for a package what ran, then the table and the threshold used."""
    from .comparison import describe_detector, describe_threshold
    from .metrics import format_table  # scikit-learn loads only when a report is made

    lines = [describe_detector(report)] if "package" in report else []
    lines.append(format_table(report["metrics"]))
    lines.append(describe_threshold(report))
    return "\n".join(lines)


def _check_targets(targets: list[str]) -> None:
    """Refuse to compare a run or package with itself (under the same or another name)."""
    for i, other in enumerate(targets[1:], start=1):
        for earlier in targets[:i]:
            if os.path.samefile(other, earlier):
                raise EvaluationError(f"--compare {other}: that is {earlier} again; compare with another run or "
                                      "model package")


def _check_options(targets: list[str], runs: list[str], options: dict[str, Any]) -> None:
    """Refuse an option that no target takes, before anything is scored."""
    if options["calibrate"] and len(targets) > 1:
        raise EvaluationError("--calibrate cannot be combined with --compare: calibrate each run on its own "
                              "(dgs eval RUN --data VAL --calibrate), then compare them")
    given = {"calibrate": options["calibrate"], "tta": options["tta"] is not None,
             "precision": options["precision"] is not None, "backend": options["backend"] is not None}
    for option, message in (*RUN_ONLY.items(), *PACKAGE_ONLY.items()):
        of_its_kind = runs if option in RUN_ONLY else [t for t in targets if t not in runs]
        if given[option] and not of_its_kind:
            kind = "model package" if option in RUN_ONLY else "training run"
            which = f"{targets[0]} is a {kind}" if len(targets) == 1 else (
                f"{', '.join(targets)} are all {kind}s")
            raise EvaluationError(f"{message}; {which}")
    json_out = options["json_out"]
    if json_out and not Path(json_out).resolve().parent.is_dir():
        raise EvaluationError(f"{json_out}: cannot write the report, its folder does not exist")
    if json_out and os.path.exists(json_out):
        for target in targets:
            if target not in runs and os.path.samefile(json_out, target):
                raise EvaluationError(f"--json {json_out}: that is the model package {target}, the report cannot "
                                      "be written over it")


def _evaluate(target: str, is_run: bool, options: dict[str, Any]) -> dict[str, Any]:
    """One target's report: a run through `dgs_trainer.eval_run`, a package through `dgs_sdk.evaluation`."""
    o = options
    if is_run:
        eval_run = _eval_run_module()
        config = eval_run.EvalConfig(run=target, data=o["data"], split=o["split"], threshold=o["threshold"],
                                     calibrate=o["calibrate"], tta=o["tta"] or 1, batch_size=o["batch_size"],
                                     device=o["device"] or "auto", workers=2 if o["workers"] is None else o["workers"])
        return eval_run.evaluate_run(config, progress=o["progress"])
    from .evaluation import PackageEvalConfig, evaluate_package

    config = PackageEvalConfig(model=target, data=o["data"], split=o["split"], threshold=o["threshold"],
                               precision=o["precision"] or "auto", backend=o["backend"] or "auto", device=o["device"],
                               batch_size=o["batch_size"], workers=o["workers"] or None)
    return evaluate_package(config, progress=o["progress"])


def _warn_unreadable(report: dict[str, Any], label: str | None = None) -> None:
    if report["unreadable"]:
        example = next(iter(report.get("errors", {}).values()), None)
        click.echo((f"{label}: " if label else "") + f"{report['unreadable']} unreadable images were skipped"
                   + (f" (e.g. {example})" if example else ""), err=True)


@click.command("eval")
@click.argument("target", metavar="RUN_OR_MODEL", type=click.Path(exists=True))
@click.option("--compare", "others", metavar="RUN_OR_MODEL", multiple=True, type=click.Path(exists=True),
              help="Also score this run or package on the same images and print it beside RUN_OR_MODEL: AUC, "
                   "accuracy and AP per generator, and its AUC minus RUN_OR_MODEL's (ΔAUC). Repeatable.")
@click.option("--data", required=True, help="Labelled data root or CSV manifest to evaluate on.")
@click.option("--split", help="Only images under a folder of this name (e.g. val).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold, for every detector [default: the package's; for a run its calibrated "
                   "threshold, else 0.5].")
@click.option("--calibrate", is_flag=True,
              help="Run only, not with --compare: choose the threshold that maximises balanced accuracy on --data "
                   "and store it in the run (use validation data, never the test set).")
@click.option("--tta", type=click.IntRange(min=1), default=None,
              help="Runs only, patch-select: average each image's logit over K seeded mosaic orders, as the official "
                   "evaluation shuffles the mosaic [default: 1, the deterministic order the deployed model uses].")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default=None,
              help="Packages only: the variant to run [default: auto, the fastest the backend and device run].")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default=None,
              help="Packages only: the runtime [default: auto, the best available].")
@click.option("--device", help="cpu, cuda or cuda:N [default: best available].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the report as JSON here (with --compare: every detector's report and the differences).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Run: data loading processes [default: 2]; package: decoding threads [default: one per CPU, at "
                   "most 8].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on standard error.")
def eval_command(target: str, others: tuple[str, ...], **options: Any) -> None:
    """Accuracy, real/fake accuracy, AP and ROC-AUC per generator and on average, of a training run (a folder,
    scored with torch) or of a model package (a .dgs file, scored as deployed: its backend, device and precision
    variant; needs no torch). With --compare, several runs or packages scored on the same images, side by side.

    Options of one kind of target (--tta for runs, --precision and --backend for packages) apply to the targets
    of that kind."""
    targets = [target, *others]
    _check_targets(targets)
    runs = [t for t in targets if os.path.isdir(t)]
    _check_options(targets, runs, options)
    if options["json_out"] and runs:
        eval_run = _eval_run_module()
        for run in runs:
            eval_run.check_report_path(run, options["json_out"])
    if not others:
        report = _evaluate(target, bool(runs), options)
        click.echo(format_report(report))
        _warn_unreadable(report)
        if options["json_out"]:
            Path(options["json_out"]).write_text(json.dumps(report, indent=2))
        return
    from .comparison import compare_reports, detector_labels, format_comparison

    labels = detector_labels(targets)
    reports = []
    for label, t in zip(labels, targets, strict=True):
        if options["progress"]:
            click.echo(f"scoring {label}", err=True)
        reports.append(_evaluate(t, t in runs, options))
    click.echo(format_comparison(reports, labels))
    for label, report in zip(labels, reports, strict=True):
        _warn_unreadable(report, label)
    if options["json_out"]:
        both = {"detectors": reports, "comparison": compare_reports(reports, labels)}
        Path(options["json_out"]).write_text(json.dumps(both, indent=2))
