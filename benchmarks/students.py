"""Choosing a distillation student: size, arithmetic and ONNX Runtime CPU speed of candidate image towers.

`dgs distill` distils a ViT-L-14 detector (CLIP image tower + linear head) into a smaller open_clip image tower
+ linear head at the teacher's input size. For the teacher and each candidate, built as the product builds them
(``create_clip(arch, "none", image_size=224)``, then `ClipImageDetector` of its image tower, random weights, eval
mode): parameters of the deployed network; GFLOP per image at 224 px (2 x multiply-adds, counted by torch's
FlopCounterMode on a batch-1 forward, attention through scaled-dot-product's math path so that it is counted);
images/s of the SDK's ONNX Runtime CPU backend, as deployment runs it, on the float32 export and on its
``int8-cpu`` variant (`dgs_export.precision`), at batch 1 and batch 8.

Each architecture is built, counted, exported (`export_onnx`) and converted in a process of its own, which gives
its memory back; then all are loaded at once and timed in rounds that visit every architecture in turn, so that
the drift of a shared machine reaches all of them alike. A timed block preprocesses one 1024x1024 JPEG with the
SDK (decode + patch-select, one image on one thread), then runs each variant at batch 1 and batch 8; medians are
reported. The end-to-end column is 1 / (preprocessing time per image + model time per image at batch 8): one
image after another through both stages.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from _common import header, peak_resident_gb, photos, seconds

TEACHER = "ViT-L-14"
STUDENTS = ("ViT-B-16", "ViT-S-16", "ViT-B-32", "MobileCLIP-S1", "MobileCLIP2-S0", "timm-convnext_atto",
            "timm-efficientnet_b0")
IMAGE_SIZE = 224
VARIANTS = ("fp32", "int8-cpu")
BATCHES = (1, 8)
SLICE_S = 10.0  # seconds of timed blocks per architecture and round
RESULTS = Path(__file__).parent / "RESULTS.md"


def build_detector(arch: str):
    """The deployed network of a student of ``arch``, as `dgs distill` builds it (random weights, eval mode)."""
    import torch

    from dgs_trainer.models import ClipImageDetector, create_clip, image_embedding_width

    torch.manual_seed(0)
    clip = create_clip(arch, "none", image_size=IMAGE_SIZE)
    return ClipImageDetector(clip.visual, image_embedding_width(clip.visual)).eval()


def flops_per_image(model) -> float:
    """FLOPs (2 x multiply-adds) of one forward of a ``[1, 3, 224, 224]`` image.

    FlopCounterMode has no formula for torch's fused CPU attention kernels (nor for nn.MultiheadAttention's fast
    path), which would leave attention out; on the math path attention is matrix products, which it counts.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops())


def _prepare_child(arch: str, folder: str) -> None:
    """Build, count, export and convert ``arch``; writes fp32.onnx, int8-cpu.onnx and facts.json in ``folder``."""
    from dgs_export.onnx_export import export_onnx
    from dgs_export.precision import convert

    folder_path = Path(folder)
    model = build_detector(arch)
    facts = {"params": sum(p.numel() for p in model.parameters()), "flops": flops_per_image(model)}
    start = time.perf_counter()
    fp32 = export_onnx(model, IMAGE_SIZE)
    facts["export_s"] = time.perf_counter() - start
    (folder_path / "fp32.onnx").write_bytes(fp32)
    del model
    gc.collect()
    start = time.perf_counter()
    try:
        (folder_path / "int8-cpu.onnx").write_bytes(convert(fp32, "int8-cpu"))
        facts["convert_s"] = time.perf_counter() - start
    except Exception as e:  # a failed conversion is a finding, reported in the table
        facts["convert_error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
    facts["peak_gb"] = peak_resident_gb()
    (folder_path / "facts.json").write_text(json.dumps(facts))


def prepare(arch: str, folder: Path) -> tuple[dict[str, bytes], dict]:
    """The ONNX graphs of ``arch`` (variant -> bytes) and its facts, made in a spawned process."""
    child = multiprocessing.get_context("spawn").Process(target=_prepare_child, args=(arch, str(folder)))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{arch}: building or exporting failed in the child process (exit code {child.exitcode})")
    graphs = {v: (folder / f"{v}.onnx").read_bytes() for v in VARIANTS if (folder / f"{v}.onnx").exists()}
    return graphs, json.loads((folder / "facts.json").read_text())


def in_memory_package(arch: str, graphs: dict[str, bytes], spec):
    """A `ModelPackage` holding ``graphs`` as its variants, as `dgs export` would write it (not written to disk)."""
    from dgs_sdk.package import VARIANT_FILES, Manifest, ModelPackage, Variant

    manifest = Manifest(preprocess=spec, variants={v: Variant(v, VARIANT_FILES[v]) for v in graphs},
                        architecture={"arch": arch})
    return ModelPackage(path=Path(f"{arch}.dgs"), manifest=manifest,
                        members={VARIANT_FILES[v]: data for v, data in graphs.items()})


def jpeg_photos(size: int) -> list[bytes]:
    """The sample photographs resized to ``size`` x ``size``, as JPEG files' bytes (quality 95)."""
    encoded = []
    for image in photos(size):
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        encoded.append(data.tobytes())
    return encoded


def measure(backends: dict[str, dict], inputs: np.ndarray, preprocess_one, rounds: int, images: int,
            ) -> tuple[dict[str, dict[tuple[str, int], float]], dict[str, int], list[float]]:
    """Median images/s of every architecture's backends (arch -> variant -> backend) at each batch size.

    A block of an architecture preprocesses one photograph, then runs each variant at each batch size once. Every
    round gives each architecture about `SLICE_S` of blocks (at least one; at most ``images`` images per variant at
    batch 8 over all rounds), architectures in turn, so that a change of the shared machine's load reaches all of
    them alike. Returns the speeds (arch -> (variant, batch) -> images/s), the timed blocks of each architecture
    and the preprocessing time of every timed block.
    """
    preprocess_times: list[float] = []

    def block(arch: str, i: int) -> dict[tuple[str, int], float]:
        preprocess_times.append(seconds(partial(preprocess_one, i)))
        return {(variant, size): seconds(partial(backend.run, inputs[:size]))
                for size in BATCHES for variant, backend in backends[arch].items()}

    repeats = {}
    for arch in backends:  # a warm-up block sets how many blocks fit in a slice
        took = sum(block(arch, 0).values())
        repeats[arch] = max(1, min(int(SLICE_S / took), images // (max(BATCHES) * rounds)))
    preprocess_times.clear()
    times: dict[str, dict[tuple[str, int], list[float]]] = {arch: {} for arch in backends}
    for r in range(rounds):
        for arch, count in repeats.items():
            for k in range(count):
                for key, t in block(arch, r * count + k).items():
                    times[arch].setdefault(key, []).append(t)
    speeds = {arch: {(variant, size): size / statistics.median(t) for (variant, size), t in runs.items()}
              for arch, runs in times.items()}
    return speeds, {arch: count * rounds for arch, count in repeats.items()}, preprocess_times


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if value < 100 else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _end_to_end(images_per_s: float | None, preprocess_s: float) -> str:
    """Images/s of one image after another through preprocessing and the model."""
    return fmt(1 / (preprocess_s + 1 / images_per_s)) if images_per_s else "-"


def table(rows: dict[str, dict], preprocess_s: float) -> list[str]:
    teacher = rows.get(TEACHER, {}).get("speed", {})
    lines = [
        "| arch | params (M) | GFLOP / image (2 x MAC, 224 px) | fp32 img/s, b1 | fp32 img/s, b8 | int8-cpu img/s, b1 "
        "| int8-cpu img/s, b8 | int8-cpu / fp32, b8 | x teacher, fp32 b8 | x teacher, int8-cpu b8 "
        "| end-to-end img/s, fp32 | end-to-end img/s, int8-cpu |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, row in rows.items():
        speed = row["speed"]
        fp32, int8 = speed.get(("fp32", 8)), speed.get(("int8-cpu", 8))
        name = f"{arch} (teacher)" if arch == TEACHER else arch
        lines.append(
            f"| {name} | {row['params'] / 1e6:.1f} | {row['flops'] / 1e9:.1f} | {fmt(speed.get(('fp32', 1)))} | "
            f"{fmt(fp32)} | {fmt(speed.get(('int8-cpu', 1)))} | {fmt(int8)} | {_ratio(int8, fp32)} | "
            f"{_ratio(fp32, teacher.get(('fp32', 8)))} | {_ratio(int8, teacher.get(('int8-cpu', 8)))} | "
            f"{_end_to_end(fp32, preprocess_s)} | {_end_to_end(int8, preprocess_s)} |"
        )
    return lines


def costs_table(rows: dict[str, dict]) -> list[str]:
    lines = ["| arch | export (s) | int8-cpu conversion (s) | peak memory of export + conversion (GB) "
             "| ONNX fp32 (MB) | ONNX int8-cpu (MB) | timed runs |", "|---|---|---|---|---|---|---|"]
    for arch, row in rows.items():
        sizes = row["sizes"]
        convert = f"{row['convert_s']:.1f}" if "convert_s" in row else f"fails ({row.get('convert_error', '?')})"
        int8_mb = f"{sizes['int8-cpu'] / 1e6:.0f}" if "int8-cpu" in sizes else "-"
        lines.append(f"| {arch} | {row['export_s']:.1f} | {convert} | {row['peak_gb']:.1f} | "
                     f"{sizes['fp32'] / 1e6:.0f} | {int8_mb} | {row.get('blocks', '-')} |")
    return lines


def reading(rows: dict[str, dict], preprocess_s: float) -> list[str]:
    """Sentences the figures support by themselves: which models the preprocessing outpaces."""
    notes = []
    for variant in VARIANTS:
        bound = [arch for arch, row in rows.items()
                 if row["speed"].get((variant, 8)) and 1 / row["speed"][variant, 8] < preprocess_s]
        notes.append(f"- {variant}, batch 8: model faster than the preprocessing ({preprocess_s * 1e3:.1f} ms/image) "
                     f"for {', '.join(bound) if bound else 'none of them'}.")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=[TEACHER, *STUDENTS],
                        help="architectures to measure; the ratios need the teacher among them")
    parser.add_argument("--images", type=int, default=240,
                        help="at most this many images timed per architecture and variant at batch 8 (as many "
                             "runs at batch 1); a slow architecture gets fewer: one run of each per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, each visiting every architecture")
    parser.add_argument("--write", action="store_true", help=f"append the section to {RESULTS}")
    args = parser.parse_args()

    import onnxruntime

    from dgs_sdk import PreprocessSpec
    from dgs_sdk.backends import create_backend
    from dgs_sdk.image import load_image
    from dgs_sdk.preprocess import preprocess, preprocess_batch

    spec = PreprocessSpec.patch_select(IMAGE_SIZE)
    encoded = jpeg_photos(1024)
    decoded = [load_image(data) for data in encoded]
    inputs = preprocess_batch([decoded[i % len(decoded)] for i in range(max(BATCHES))], spec)  # [8, 3, 224, 224]

    def preprocess_one(i: int) -> np.ndarray:
        return load_image(encoded[i % len(encoded)], transform=partial(preprocess, spec=spec))

    load_before = os.getloadavg()
    started = time.perf_counter()
    rows: dict[str, dict] = {}
    backends: dict[str, dict] = {}
    for arch in args.archs:
        with tempfile.TemporaryDirectory(prefix="dgs-students-") as tmp:
            graphs, facts = prepare(arch, Path(tmp))
        package = in_memory_package(arch, graphs, spec)
        backends[arch] = {}
        for variant in graphs:
            try:
                backends[arch][variant] = create_backend("onnxruntime", package, device="cpu", precision=variant)
            except Exception as e:  # a variant ONNX Runtime cannot load or run is a finding, not the end of the run
                facts.setdefault("errors", []).append(f"{arch} {variant}: {type(e).__name__}: {str(e).strip()[:200]}")
        rows[arch] = {**facts, "sizes": {v: len(g) for v, g in graphs.items()}}
        del package, graphs
        gc.collect()
        print(f"{arch}: exported and loaded after {time.perf_counter() - started:.0f} s", flush=True)
    speeds, blocks, preprocess_times = measure(backends, inputs, preprocess_one, args.rounds, args.images)
    for arch in rows:
        rows[arch].update(speed=speeds[arch], blocks=blocks[arch])
    del backends
    gc.collect()
    preprocess_s = statistics.median(preprocess_times)
    minutes = (time.perf_counter() - started) / 60

    out = [header("Distillation students: size, FLOPs and ONNX Runtime CPU speed at 224 px, random weights")]
    out.append(
        f"- onnxruntime {onnxruntime.__version__}, CPU execution provider through the SDK's backend (fp32 and "
        f"int8-cpu at ORT_ENABLE_ALL); intra-op threads: ONNX Runtime's default (one per physical core; "
        f"{os.cpu_count()} logical CPUs here), spinning off as the SDK sets it; load average "
        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {minutes:.1f} minutes in all"
    )
    out.append(
        f"- preprocessing (decode + patch-select + normalise of a 1024x1024 JPEG, one image, one thread): "
        f"{preprocess_s * 1e3:.1f} ms/image, median of {len(preprocess_times)} interleaved with the model runs "
        f"(middle half {np.percentile(preprocess_times, 25) * 1e3:.1f}-"
        f"{np.percentile(preprocess_times, 75) * 1e3:.1f} ms)"
    )
    out.append(f"- img/s: median of the timed runs (\"timed runs\" below: per variant and batch size) in "
               f"{args.rounds} rounds, each visiting every architecture for about {SLICE_S:g} s (at least one run "
               f"of each variant and batch; at most {args.images} images per variant at batch 8 in all); peak "
               f"memory of the timing process, holding every session at once: {peak_resident_gb():.1f} GB; "
               "x teacher: the student's images/s over the teacher's, same variant, batch 8; end-to-end: "
               "1 / (preprocessing + model time per image at batch 8)\n")
    out += table(rows, preprocess_s) + [""] + costs_table(rows) + [""] + reading(rows, preprocess_s)
    out += [f"- fails: {error}" for row in rows.values() for error in row.get("errors", [])]
    text = "\n".join(out)
    print(text)
    if args.write:
        with open(RESULTS, "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
