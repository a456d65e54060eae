"""Exporting real-size detectors and running them with ONNX Runtime on the CPU.

For each architecture (random weights: export and inference cost the same with pretrained ones), three models
built on one CLIP: the plain image detector, the DGS-Net student with random LoRA factors merged into its weights,
and the MiraGe-prompted image encoder (default `MiraGeConfig`). For each: the wall time of `export_package` (trace,
graph simplification and checks, the ONNX Runtime vs torch parity check on two photos, the package written and
loaded back) and the size of the ONNX graph; for the architectures in ``--throughput``, images/s of the SDK's ONNX
Runtime CPU backend on preprocessed photos at each batch size (warm-up runs first, then timed runs of the three
models interleaved, so that drift of the machine reaches all of them alike).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import header, photos

METHODS = ("plain", "dgs", "mirage")
LABELS = {"plain": "plain detector", "dgs": "DGS-Net student, LoRA merged", "mirage": "MiraGe-prompted encoder"}


def build(method: str, clip, arch: str):
    """The inference network of ``method`` on ``clip`` (which is frozen and left unchanged)."""
    import open_clip
    import torch
    from torch import nn

    from dgs_trainer.lora import LoRAAttention, LoRAConfig
    from dgs_trainer.methods.dgs import DGSNet
    from dgs_trainer.methods.mirage import MiraGe, MiraGeConfig
    from dgs_trainer.models import ClipImageDetector

    torch.manual_seed(0)
    dim = clip.visual.output_dim
    if method == "plain":  # what build_image_detector(arch) gives, on the shared CLIP instead of a second one
        return ClipImageDetector(clip.visual, dim).eval()
    if method == "dgs":
        net = DGSNet(clip, nn.Linear(dim, 1), LoRAConfig(), help_weight=0.2, caption_tokens=None)
        with torch.no_grad():  # trained LoRA factors are not zero; random ones make the merge change every weight
            for module in net.student.modules():
                if isinstance(module, LoRAAttention):
                    for b in module.lora_B.values():
                        b.normal_(std=0.05)
        return net.inference_model()
    return MiraGe(clip, open_clip.get_tokenizer(arch), MiraGeConfig()).inference_model()


def images_per_second(backends: dict, batch: np.ndarray, warmup: int, runs: int) -> dict[str, float]:
    """Median images/s of each backend on ``batch``, the timed runs of the backends interleaved."""
    for backend in backends.values():
        for _ in range(warmup):
            backend.run(batch)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(runs):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.run(batch)
            times[name].append(time.perf_counter() - start)
    return {name: len(batch) / statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["ViT-B-32", "ViT-B-16", "ViT-L-14"],
                        help="architectures to export (time and size)")
    parser.add_argument("--throughput", nargs="*", default=["ViT-L-14"],
                        help="architectures whose exported models are also timed with ONNX Runtime")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model and batch size")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from dgs_export import export_package
    from dgs_sdk import ModelPackage, PreprocessSpec
    from dgs_sdk.backends import create_backend
    from dgs_sdk.preprocess import preprocess_batch
    from dgs_trainer.models import create_clip

    spec = PreprocessSpec.clip()
    sample = photos()
    rows: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            torch.manual_seed(0)
            clip = create_clip(arch, pretrained="none").requires_grad_(False).eval()
            packages = {}
            for method in METHODS:
                model = build(method, clip, arch)
                path = Path(tmp) / f"{arch}-{method}.dgs"
                start = time.perf_counter()
                export_package(model, path, spec, sample[:2], architecture={"arch": arch, "head": method})
                took = time.perf_counter() - start
                package = ModelPackage.load(path)
                rows[arch, method] = {"export": took, "onnx_bytes": package.manifest.files["model.onnx"]["size"],
                                      "parity": package.manifest.provenance["parity"]["max_abs_probability_diff"]}
                packages[method] = path
                del model, package
                gc.collect()
            del clip
            gc.collect()
            if arch in args.throughput:
                backends = {m: create_backend("onnxruntime", ModelPackage.load(p), device="cpu")
                            for m, p in packages.items()}
                for size in args.batches:
                    batch = preprocess_batch([sample[i % len(sample)] for i in range(size)], spec)  # [B, 3, S, S]
                    for method, speed in images_per_second(backends, batch, args.warmup, args.runs).items():
                        rows[arch, method][f"batch {size}"] = speed
                del backends
            for path in packages.values():
                path.unlink()
            gc.collect()

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    print(header("Exporting real-size detectors, random weights; ONNX Runtime on the CPU"))
    speed_columns = [f"batch {size}" for size in args.batches]
    print("| arch | model | export (s) | ONNX graph (MB) | parity (max abs prob. diff) | "
          + " | ".join(f"images/s, {c}" for c in speed_columns) + " |")
    print("|---|---|---|---|---|" + "---|" * len(speed_columns))
    for (arch, method), row in rows.items():
        speeds = " | ".join(f"{row[c]:.2f}" if c in row else "-" for c in speed_columns)
        print(f"| {arch} | {LABELS[method]} | {row['export']:.1f} | {row['onnx_bytes'] / 1e6:.0f} | "
              f"{row['parity']:.1e} | {speeds} |")
    print(f"\ntorch {torch.__version__}, onnxruntime {onnxruntime.__version__} (CPU execution provider, default "
          f"threads); images/s: median of {args.runs} timed runs after {args.warmup} warm-up runs, models "
          f"interleaved; peak resident memory of the run {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
