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
    from .metrics import format_table  # scikit-learn loads only when a report is made

    lines = []
    if "package" in report:
        p = report["package"]
        lines.append(f"{p['path']}: {p['precision']} variant ({p['file']}, sha256 {p['sha256'][:12]}) on "
                     f"{report['backend']}, {report['device']}")
    lines.append(format_table(report["metrics"]))
    oracle = report["oracle_threshold"]
    lines.append(f"threshold {report['threshold']:.4f} ({report['threshold_source']}); " + (
        f"oracle threshold on this data {oracle:.4f} (balanced accuracy {report['oracle_balanced_accuracy']:.4f})"
        if oracle is not None else "no oracle threshold (the data holds one class only)"))
    return "\n".join(lines)


@click.command("eval")
@click.argument("target", metavar="RUN_OR_MODEL", type=click.Path(exists=True))
@click.option("--data", required=True, help="Labelled data root or CSV manifest to evaluate on.")
@click.option("--split", help="Only images under a folder of this name (e.g. val).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Decision threshold [default: the package's; for a run its calibrated threshold, else 0.5].")
@click.option("--calibrate", is_flag=True,
              help="Run only: choose the threshold that maximises balanced accuracy on --data and store it in the "
                   "run (use validation data, never the test set).")
@click.option("--tta", type=click.IntRange(min=1), default=None,
              help="Run only, patch-select: average each image's logit over K seeded mosaic orders, as the official "
                   "evaluation shuffles the mosaic [default: 1, the deterministic order the deployed model uses].")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default=None,
              help="Package only: the variant to run [default: auto, the fastest the backend and device run].")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default=None,
              help="Package only: the runtime [default: auto, the best available].")
@click.option("--device", help="cpu, cuda or cuda:N [default: best available].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Run: data loading processes [default: 2]; package: decoding threads [default: one per CPU, at "
                   "most 8].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on standard error.")
def eval_command(target, data, split, threshold, calibrate, tta, precision, backend, device, json_out, batch_size,
                 workers, progress) -> None:
    """Accuracy, real/fake accuracy, AP and ROC-AUC per generator and on average, of a training run (a folder,
    scored with torch) or of a model package (a .dgs file, scored as deployed: its backend, device and precision
    variant; needs no torch)."""
    is_run = os.path.isdir(target)
    given = {"calibrate": calibrate, "tta": tta is not None, "precision": precision is not None,
             "backend": backend is not None}
    for option, message in (PACKAGE_ONLY if is_run else RUN_ONLY).items():
        if given[option]:
            raise EvaluationError(f"{message}; {target} is a {'training run' if is_run else 'model package'}")
    if json_out and not Path(json_out).resolve().parent.is_dir():
        raise EvaluationError(f"{json_out}: cannot write the report, its folder does not exist")
    if is_run:
        eval_run = _eval_run_module()
        if json_out:
            eval_run.check_report_path(target, json_out)
        config = eval_run.EvalConfig(run=target, data=data, split=split, threshold=threshold, calibrate=calibrate,
                                     tta=tta or 1, batch_size=batch_size, device=device or "auto",
                                     workers=2 if workers is None else workers)
        report = eval_run.evaluate_run(config, progress=progress)
    else:
        from .evaluation import PackageEvalConfig, evaluate_package

        config = PackageEvalConfig(model=target, data=data, split=split, threshold=threshold,
                                   precision=precision or "auto", backend=backend or "auto", device=device,
                                   batch_size=batch_size, workers=workers or None)
        report = evaluate_package(config, progress=progress)
    click.echo(format_report(report))
    if report["unreadable"]:
        example = next(iter(report.get("errors", {}).values()), None)
        click.echo(f"{report['unreadable']} unreadable images were skipped" + (f" (e.g. {example})" if example else ""),
                   err=True)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))
