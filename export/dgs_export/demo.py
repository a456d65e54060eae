"""`dgs demo`: every stage of the product on a fresh machine, with no network and no model weights.

1. makes a labelled dataset: real photographs and the outputs of two small generators it trains itself
   (`dgs_trainer.demo_data`), the second one kept out of training;
2. trains DGS-Net and MiraGe on `dgs-tiny-vit` (random initialisation: no weights can be downloaded) on the CPU;
3. calibrates each threshold on the validation split and evaluates the held-out test split per generator;
4. distils DGS-Net into a student of half its depth (`dgs-micro-vit`) and compares the two on the test split;
5. exports DGS-Net to ``WORKDIR/model.dgs`` and scans the test folder with the SDK into ``WORKDIR/scan.csv``; exports
   the student with an INT8 variant through the accuracy gate to ``WORKDIR/student.dgs`` and scans with it too.

It proves the pipeline, not a production detector: see the README for the production recipe.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from dgs_sdk.comparison import format_comparison
from dgs_sdk.errors import DgsError
from dgs_sdk.metrics import format_table
from dgs_sdk.scan import ScanConfig, scan
from dgs_trainer.config import TrainConfig
from dgs_trainer.demo_data import DemoDataConfig, make_demo_dataset
from dgs_trainer.eval_run import EvalConfig, evaluate_run
from dgs_trainer.lora import LoRAConfig
from dgs_trainer.methods.dgs import DGSConfig
from dgs_trainer.methods.distill import DistillConfig
from dgs_trainer.methods.mirage import MiraGeConfig, PromptConfig
from dgs_trainer.train import fit, resolve_device

from .run_export import ExportConfig, export_run

__all__ = ["DEMO_MARKER", "DemoConfig", "run_demo", "demo_command"]

DEMO_MARKER = ".dgs-demo"


@dataclass
class DemoConfig:
    """Sizes and schedule of the demo; the defaults take about a minute on two CPU cores."""

    workdir: str = "demo"
    data: DemoDataConfig = field(default_factory=DemoDataConfig)
    probe_epochs: int = 3
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    # A random-init backbone learns faster with a wider, less regularised LoRA than the published r=6, p=0.8
    # (alpha = sqrt(r): updates at unit scale).
    lora_rank: int = 16
    lora_alpha: float = 4.0
    lora_dropout: float = 0.1
    # MiraGe: the tiny text encoder has 2 layers, so prompts go 2 deep; its few steps need a larger rate than
    # MaPLe's 3.5e-3.
    mirage_epochs: int = 10
    mirage_lr: float = 1e-2
    prompt_depth: int = 2
    # Distillation: the demo has no pretrained small CLIP for the student to start from, so it starts from every
    # other block of the teacher's own encoder (DistilBERT's initialisation), then learns from the teacher.
    student: str = "dgs-micro-vit"
    distill_epochs: int = 10
    distill_lr: float = 1e-4
    device: str = "auto"
    workers: int = 2
    progress: bool = True


def run_demo(config: DemoConfig, say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run every stage; returns the paths written and the test-split report."""
    workdir = Path(config.workdir)
    data, run, marker = workdir / "data", workdir / "run", workdir / DEMO_MARKER
    mirage_run = workdir / "run-mirage"
    student_run = workdir / "run-student"
    resolve_device(config.device)  # a bad device fails now, not after the dataset is made
    if any(p.exists() for p in (data, run, mirage_run, student_run)) and not marker.exists():
        raise DgsError(f"{workdir}: holds data/ or run/ that an earlier demo did not write; choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by dgs demo: data/ and run/ here are replaced by the next demo\n")
    for previous in (data, run, mirage_run, student_run):  # the demo's own folders, from an earlier demo
        shutil.rmtree(previous, ignore_errors=True)

    say(f"1/6 making the dataset in {data}: photo crops, and two generators trained on them")
    make_demo_dataset(data, config.data)

    say("2/6 training DGS-Net (probe, then LoRA with gradient surgery) on dgs-tiny-vit")
    # The demo's 96-pixel crops hold 9 patches: the official padding would leave 31 of the 49 tiles black.
    train_config = TrainConfig(
        data=str(data / "train"), val=str(data / "val"), out=str(run), method="dgs", arch="dgs-tiny-vit",
        pretrained="none", batch_size=config.batch_size, small_images="resize", device=config.device,
        workers=config.workers, options=DGSConfig(
            probe_epochs=config.probe_epochs, epochs=config.epochs, lr=config.lr, captions=str(data / "captions.json"),
            lora=LoRAConfig(rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout)),
    )
    fit(train_config, progress=config.progress)

    say("3/6 training MiraGe (deep multimodal prompts on the frozen backbone) on the same data")
    fit(TrainConfig(
        data=str(data / "train"), val=str(data / "val"), out=str(mirage_run), method="mirage", arch="dgs-tiny-vit",
        pretrained="none", batch_size=config.batch_size, device=config.device, workers=config.workers,
        options=MiraGeConfig(epochs=config.mirage_epochs, lr=config.mirage_lr,
                             prompt=PromptConfig(depth=config.prompt_depth)),
    ), progress=config.progress)

    say("4/6 evaluating both: thresholds calibrated on val, then the held-out test split")
    reports = {}
    for name, folder in (("DGS-Net", run), ("MiraGe", mirage_run)):
        evaluate_run(EvalConfig(run=str(folder), data=str(data / "val"), calibrate=True, device=config.device,
                                workers=config.workers), progress=config.progress)
        reports[name] = evaluate_run(EvalConfig(run=str(folder), data=str(data / "test"), device=config.device,
                                                workers=config.workers), progress=config.progress)
        say(f"{name} ({folder}), threshold {reports[name]['threshold']:.3f} "
            f"({reports[name]['threshold_source']} on val):")
        say(format_table(reports[name]["metrics"]))
    say("'upsampler' was never seen in training. Mean test AUC: " + ", ".join(
        f"{name} {r['metrics']['mean']['auc']:.3f}" for name, r in reports.items()))
    say("(MiraGe trains prompts only: on this random backbone it has no pretrained features to steer, so expect "
        "little above chance; see the README)")
    report = reports["DGS-Net"]
    say(f"5/6 distilling DGS-Net into {config.student} (half its depth, started from the teacher's own blocks)")
    fit(TrainConfig(
        data=str(data / "train"), val=str(data / "val"), out=str(student_run), method="distill", arch=config.student,
        pretrained="none", batch_size=config.batch_size, small_images="resize", device=config.device,
        workers=config.workers, options=DistillConfig(teacher=str(run.resolve()), epochs=config.distill_epochs,
                                                      lr=config.distill_lr, init_from_teacher=True),
    ), progress=config.progress)
    evaluate_run(EvalConfig(run=str(student_run), data=str(data / "val"), calibrate=True, device=config.device,
                            workers=config.workers), progress=config.progress)
    student_report = evaluate_run(EvalConfig(run=str(student_run), data=str(data / "test"), device=config.device,
                                             workers=config.workers), progress=config.progress)
    say(format_comparison([report, student_report], ["DGS-Net (teacher)", f"{config.student} (student)"]))
    say(f"Mean test AUC: teacher {report['metrics']['mean']['auc']:.3f}, student "
        f"{student_report['metrics']['mean']['auc']:.3f}")
    say("6/6 exporting the model packages and scanning the test folder with the SDK")
    package = export_run(ExportConfig(run=str(run), out=str(workdir / "model.dgs")))
    scan_csv = workdir / "scan.csv"
    summary = scan(ScanConfig(paths=[str(data / "test")], model=str(package), out=str(scan_csv), overwrite=True,
                              progress=config.progress))
    say(summary.line())
    with open(scan_csv, newline="", encoding="utf-8") as f:
        scanned = {row["path"]: float(row["probability"]) for row in csv.DictReader(f) if row["probability"]}
    evaluated = report["probabilities"]
    worst = max(abs(scanned[path] - p) for path, p in evaluated.items() if p is not None)
    say(f"dgs scan (ONNX Runtime) vs dgs eval (torch), {len(scanned)} files: largest probability difference "
        f"{worst:.1e}")
    student_package, precisions = _export_student(student_run, workdir / "student.dgs", say)
    student_csv = workdir / "scan-student.csv"
    student_summary = scan(ScanConfig(paths=[str(data / "test")], model=str(student_package), out=str(student_csv),
                                      overwrite=True, progress=config.progress))
    say(f"student: {student_summary.line()}")
    say(f"wrote {package}, {scan_csv}, {student_package} ({', '.join(precisions)}) and {student_csv}")
    return {"student_run": student_run, "student_report": student_report, "student_package": student_package,
            "student_precisions": precisions, "student_summary": student_summary, "student_scan": student_csv,
            "run": run, "package": package, "scan": scan_csv, "data": data, "report": report, "summary": summary,
            "scan_vs_eval": worst, "mirage_run": mirage_run, "mirage_report": reports["MiraGe"]}


def _export_student(run: Path, out: Path, say: Callable[[str], Any]) -> tuple[Path, list[str]]:
    """The student's package with an INT8 variant (Model Optimizer Q/DQ, for TensorRT) beside float32, through
    the accuracy gate; float32 alone where Model Optimizer is not installed. Returns it and the variants it holds."""
    from dgs_sdk.package import read_manifest

    from .precision import QuantizationUnavailable, load_modelopt

    precisions = ("fp32", "int8")
    try:
        load_modelopt()
    except QuantizationUnavailable as e:
        say(f"(the student is exported in float32 only: {e})")
        precisions = ("fp32",)
    package = export_run(ExportConfig(run=str(run), out=str(out), precisions=precisions))
    held = list(read_manifest(package).variants)
    if held != list(precisions):
        say(f"(the student's {', '.join(p for p in precisions if p not in held)} variant failed the accuracy gate)")
    return package, held


@click.command("demo")
@click.option("--workdir", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the dataset, the run, model.dgs and scan.csv.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def demo_command(workdir: str, device: str, progress: bool) -> None:
    """Make data, train DGS-Net and MiraGe, evaluate both, export and scan: the whole product on a CPU.

    The model is a tiny CLIP with random weights trained on demo data: it proves the pipeline, not detection.
    """
    run_demo(DemoConfig(workdir=workdir, device=device, progress=progress), say=click.echo)
