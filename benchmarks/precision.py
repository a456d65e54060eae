"""Reduced-precision variants on ONNX Runtime's CPU provider: speed, closeness to float32, conversion cost.

For each architecture (random weights, open_clip's config, pretrained none; `dgs-tiny-vit` is the test model) the
plain detector is exported to float32 ONNX and converted by `dgs_export.precision` to ``int8-cpu`` (ONNX Runtime
dynamic per-channel INT8), ``int8`` (Model Optimizer Q/DQ, entropy-calibrated) and ``fp16`` (Model Optimizer
AutoCast); ONNX Runtime's static per-tensor Q/DQ (MinMax-calibrated) is measured too, as the alternative to
``int8-cpu``. Each conversion runs in its own process, which gives its wall time and peak memory.

Inputs are crops of scikit-image's photographs at several scales through the SDK's preprocessing; the calibration
crops and the scored crops are different ones. Figures: |delta logit| against float32 (max, mean), Pearson
correlation of the logits, and images/s at batch 8 (median of timed runs, variants interleaved). Then, in a
subprocess each, whether an ONNX Runtime CPU session of the fp16 variant is created and runs at each graph
optimization level, and how fast.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import header, peak_resident_gb, photos
from dgs_trainer.samples import photo_crops

LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
VARIANTS = ("int8-cpu", "static-qdq", "int8", "fp16")


def crops(count: int, seed: int) -> list[np.ndarray]:
    return photo_crops(photos(), count, seed)


def export_fp32(arch: str) -> bytes:
    import open_clip
    import torch

    from dgs_export.onnx_export import export_onnx
    from dgs_trainer import build_image_detector
    from dgs_trainer.models import ClipImageDetector

    torch.manual_seed(0)
    if arch == "dgs-tiny-vit":
        model = build_image_detector(arch, pretrained="none")
    else:
        clip = open_clip.create_model(arch, pretrained=None)
        model = ClipImageDetector(clip.visual, clip.visual.output_dim)
    return export_onnx(model.eval(), 224)


def static_qdq(onnx_bytes: bytes, calibration: np.ndarray) -> bytes:
    """ONNX Runtime static Q/DQ, per-tensor activations and weights, MinMax ranges (the int8-cpu alternative)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        source.write_bytes(onnx_bytes)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Conv"], per_channel=False,
                        calibrate_method=CalibrationMethod.MinMax)
        return target.read_bytes()


def _convert_child(variant: str, source: str, calibration: str, target: str, report: str) -> None:
    from dgs_export.precision import convert

    onnx_bytes, batch = Path(source).read_bytes(), np.load(calibration)
    start = time.perf_counter()
    out = static_qdq(onnx_bytes, batch) if variant == "static-qdq" else convert(onnx_bytes, variant, batch)
    seconds = time.perf_counter() - start
    Path(target).write_bytes(out)
    peak = peak_resident_gb()
    Path(report).write_text(json.dumps({"seconds": seconds, "peak_gb": peak}))


def convert_in_child(variant: str, tmp: Path, calibration: Path) -> tuple[bytes, dict]:
    target, report = tmp / f"{variant}.onnx", tmp / f"{variant}.json"
    child = multiprocessing.get_context("spawn").Process(
        target=_convert_child, args=(variant, str(tmp / "fp32.onnx"), str(calibration), str(target), str(report)))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{variant}: the conversion failed (exit code {child.exitcode})")
    return target.read_bytes(), json.loads(report.read_text())


def sdk_level(precision: str) -> str:
    """The graph optimization level the SDK runs ``precision`` at on the CPU (static Q/DQ: as int8-cpu)."""
    import onnxruntime as ort

    from dgs_sdk.backends.onnxruntime import optimization_level

    return optimization_level(ort, "fp32" if precision == "static-qdq" else precision, on_cuda=False).name


def session(onnx_bytes: bytes, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def logits(sess, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([sess.run(["logit"], {"image": batch[i : i + 8]})[0] for i in range(0, len(batch), 8)])


def speeds(sessions: dict, batch: np.ndarray, runs: int) -> dict[str, float]:
    for sess in sessions.values():
        sess.run(["logit"], {"image": batch})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(["logit"], {"image": batch})
            times[name].append(time.perf_counter() - start)
    return {name: len(batch) / statistics.median(t) for name, t in times.items()}


LEVEL_PROBE = r"""
import sys, time, numpy as np, onnxruntime as ort
path, level = sys.argv[1], sys.argv[2]
x = np.load(sys.argv[3])
o = ort.SessionOptions(); o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
o.log_severity_level = 3
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
y = s.run(["logit"], {"image": x})[0]
t = []
for _ in range(int(sys.argv[4])):
    start = time.perf_counter(); s.run(["logit"], {"image": x}); t.append(time.perf_counter() - start)
print(len(x) / sorted(t)[len(t) // 2], np.abs(y - np.load(sys.argv[5])).max())
"""


def level_matrix(tmp: Path, variant: str, batch: np.ndarray, reference: np.ndarray, runs: int) -> list[str]:
    np.save(tmp / "x.npy", batch)
    np.save(tmp / "ref.npy", reference)
    rows = []
    for level in LEVELS:
        p = subprocess.run([sys.executable, "-c", LEVEL_PROBE, str(tmp / f"{variant}.onnx"), level,
                            str(tmp / "x.npy"), str(runs), str(tmp / "ref.npy")], capture_output=True, text=True)
        if p.returncode == 0:
            speed, delta = p.stdout.split()
            rows.append(f"| {variant} | {level} | runs | {float(speed):.1f} | {float(delta):.4f} |")
        else:
            rows.append(f"| {variant} | {level} | crashes (exit code {p.returncode}) | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["dgs-tiny-vit", "ViT-B-16"])
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant")
    args = parser.parse_args()

    import onnxruntime

    from dgs_export.precision import calibration_batch
    from dgs_sdk import PreprocessSpec

    spec = PreprocessSpec.clip()
    calibration = calibration_batch(crops(args.calib_images, seed=1), spec)
    scored = calibration_batch(crops(args.eval_images, seed=2), spec)
    print(header("Precision variants on ONNX Runtime CPU"))
    print(f"- onnxruntime {onnxruntime.__version__}; {args.calib_images} calibration crops, {args.eval_images} "
          "other crops scored; images/s at batch 8\n")
    for arch in args.archs:
        with tempfile.TemporaryDirectory(prefix="dgs-precision-") as tmp_name:
            tmp = Path(tmp_name)
            fp32 = export_fp32(arch)
            (tmp / "fp32.onnx").write_bytes(fp32)
            np.save(tmp / "calibration.npy", calibration)
            graphs, costs = {"fp32": fp32}, {}
            for variant in VARIANTS:
                graphs[variant], costs[variant] = convert_in_child(variant, tmp, tmp / "calibration.npy")
            levels = {name: sdk_level(name) for name in graphs}
            sessions = {name: session(graph, levels[name]) for name, graph in graphs.items()}
            reference = logits(sessions["fp32"], scored)
            speed = speeds(sessions, scored[:8], args.runs)
            print(f"### {arch}\n")
            print("| variant | ORT level | images/s | vs fp32 | max abs dlogit | mean abs dlogit | corr | convert s "
                  "| peak GB | MB |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for name, sess in sessions.items():
                y = logits(sess, scored)
                d = np.abs(y - reference)
                cost = costs.get(name, {})
                print(f"| {name} | {levels[name]} | {speed[name]:.1f} | {speed[name] / speed['fp32']:.2f}x | "
                      f"{d.max():.4f} | {d.mean():.4f} | {np.corrcoef(y, reference)[0, 1]:.4f} | "
                      f"{cost.get('seconds', 0):.1f} | {cost.get('peak_gb', 0):.2f} | {len(graphs[name]) / 1e6:.0f} |")
            print(f"\nfp32 logits over the scored crops: std {reference.std():.4f}\n")
            print("| variant | level | session | images/s | max abs dlogit |\n|---|---|---|---|---|")
            for name in ("fp32", "fp16", "int8"):
                print("\n".join(level_matrix(tmp, name, scored[:8], reference[:8], args.runs)))
            print()


if __name__ == "__main__":
    main()
