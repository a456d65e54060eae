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
                raise EvaluationError(f"{other}: that is {earlier} again; compare with another run or "
                                      "model package")


def _check_options(targets: list[str], runs: list[str], options: dict[str, Any]) -> None:
    """Refuse an option that no target takes, before anything is scored."""
    if options["calibrate"] and len(targets) > 1:
        raise EvaluationError("--calibrate takes one run, not several detectors: calibrate each run on its own "
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
                                     device=o["device"] or "auto", workers=2 if o["workers"] is None else o["workers"],
                                     perturbations=o["perturbations"])
        return eval_run.evaluate_run(config, progress=o["progress"])
    from .evaluation import PackageEvalConfig, evaluate_package

    config = PackageEvalConfig(model=target, data=o["data"], split=o["split"], threshold=o["threshold"],
                               precision=o["precision"] or "auto", backend=o["backend"] or "auto", device=o["device"],
                               batch_size=o["batch_size"], workers=o["workers"] or None,
                               perturbations=o["perturbations"])
    return evaluate_package(config, progress=o["progress"])


def _parse_perturbations(values: tuple[str, ...]) -> tuple[Any, ...]:
    from .perturb import parse_perturbations

    perturbations = [p for value in values for p in parse_perturbations(value)]
    seen = set()
    for p in perturbations:
        if p in seen:
            raise EvaluationError(f"--perturb {p.kind}:{p.label} is given twice")
        seen.add(p)
    return tuple(perturbations)


def _warn_unreadable(report: dict[str, Any], label: str | None = None) -> None:
    if report["unreadable"]:
        example = next(iter(report.get("errors", {}).values()), None)
        click.echo((f"{label}: " if label else "") + f"{report['unreadable']} unreadable images were skipped"
                   + (f" (e.g. {example})" if example else ""), err=True)


@click.command("eval")
@click.argument("targets", metavar="RUN_OR_MODEL...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--compare", "others", metavar="RUN_OR_MODEL", multiple=True, type=click.Path(exists=True),
              help="Another run or package to score beside the first, as if given after it. Repeatable.")
@click.option("--data", required=True, help="Labelled data root or CSV manifest to evaluate on.")
@click.option("--split", help="Only images under a folder of this name (e.g. val).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold, for every detector [default: the package's; for a run its calibrated "
                   "threshold, else 0.5].")
@click.option("--calibrate", is_flag=True,
              help="One run only: choose the threshold that maximises balanced accuracy on --data and store it in "
                   "the run (use validation data, never the test set).")
@click.option("--tta", type=click.IntRange(min=1), default=None,
              help="Runs only, patch-select: average each image's logit over K seeded mosaic orders, as the official "
                   "evaluation shuffles the mosaic [default: 1, the deterministic order the deployed model uses].")
@click.option("--perturb", "perturb", metavar="KIND:LEVELS", multiple=True,
              help="Robustness sweep: score the data again with each image degraded before preprocessing, once per "
                   "level: jpeg:QUALITY,... (e.g. jpeg:95,75,50), blur:SIGMA,... (pixels), resize:SCALE,... "
                   "(e.g. resize:0.5,0.75), crop:FRACTION,... (of each side, at a position fixed per image). "
                   "Repeatable.")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default=None,
              help="Packages only: the variant to run [default: auto, the fastest the backend and device run].")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default=None,
              help="Packages only: the runtime [default: auto, the best available].")
@click.option("--device", help="cpu, cuda or cuda:N [default: best available].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the report as JSON here (several detectors: every report and the differences).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write a report folder here: metrics.json, per_generator.csv, report.md and PNG figures (ROC, "
                   "PR, score histograms, confusion matrices, robustness curves). Needs pip install 'dgs[report]'.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Run: data loading processes [default: 2]; package: decoding threads [default: one per CPU, at "
                   "most 8].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on standard error.")
def eval_command(targets: tuple[str, ...], others: tuple[str, ...], perturb: tuple[str, ...],
                 report_dir: str | None, **options: Any) -> None:
    """Accuracy, real/fake accuracy, AP and ROC-AUC per generator and on average, of training runs (folders,
    scored with torch) or model packages (.dgs files, scored as deployed: backend, device and precision variant;
    needs no torch). Several runs or packages are scored on the same images and shown side by side, AUC
    differences against the first.

    Options of one kind of target (--tta for runs, --precision and --backend for packages) apply to the targets
    of that kind."""
    targets = [*targets, *others]
    _check_targets(targets)
    runs = [t for t in targets if os.path.isdir(t)]
    _check_options(targets, runs, options)
    options["perturbations"] = _parse_perturbations(perturb)
    if options["json_out"] and runs:
        eval_run = _eval_run_module()
        for run in runs:
            eval_run.check_report_path(run, options["json_out"])
    if report_dir:
        from .report import check_report_dir

        check_report_dir(report_dir, options["data"])
        json_out = options["json_out"]
        if json_out and Path(report_dir).resolve() in Path(json_out).resolve().parents:
            raise EvaluationError(f"--json {json_out}: it lies in the --report folder {report_dir}, whose metrics.json "
                                  "holds the same report; give one of the two, or a place outside the folder")
    from .comparison import compare_reports, detector_labels, format_comparison

    labels = detector_labels(targets)
    reports = []
    for label, t in zip(labels, targets, strict=True):
        if options["progress"] and len(targets) > 1:
            click.echo(f"scoring {label}", err=True)
        reports.append(_evaluate(t, t in runs, options))
    if len(reports) == 1:
        click.echo(format_report(reports[0]))
        _warn_unreadable(reports[0])
        result: dict[str, Any] = reports[0]
    else:
        click.echo(format_comparison(reports, labels))
        for label, report in zip(labels, reports, strict=True):
            _warn_unreadable(report, label)
        result = {"detectors": reports, "comparison": compare_reports(reports, labels)}
    if options["perturbations"]:
        from .metrics import format_robustness

        click.echo("\nrobustness: mean over generators, in percent, at each detector's threshold")
        click.echo(format_robustness(reports, labels))
    if options["json_out"]:
        Path(options["json_out"]).write_text(json.dumps(result, indent=2))
    if report_dir:
        from .data import load_samples
        from .report import write_report

        written = write_report(report_dir, reports, labels, load_samples(options["data"], options["split"]))
        click.echo(f"report written to {report_dir} ({len(written)} files)", err=True)
