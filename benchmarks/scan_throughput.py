"""`dgs scan` throughput vs a naive loop, on the same folder and the same tiny model.

- dgs scan: the SDK's scan (parallel OpenCV decoding and preprocessing, batched ONNX Runtime inference) of a
  `.dgs` package exported from the model below, with the `clip` transform;
- naive loop: PIL open, open_clip's own preprocessing, the torch model in eager mode, one image at a time.

The model is `dgs-tiny-vit` with seeded random weights (no weights can be downloaded): what is measured is
the pipeline around the model, which is where a tiny model spends its time.

With ``--native-compare``: `dgs scan` of the same folder with a `patch-select` package, with the native core
(dgs_native, `pip install ./cpp_bindings`) and without it (``DGS_NATIVE=0``), in alternating rounds of one run; and
patch selection alone over the decoded images, both ways. Only the patch entropies differ between the two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from _common import header, photos
from dgs_export import export_package
from dgs_sdk import Detector, PreprocessSpec, native
from dgs_sdk.image import load_image
from dgs_sdk.preprocess import crop_image, normalize
from dgs_sdk.scan import ScanConfig, scan
from dgs_trainer import build_image_detector


def make_folder(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs of 512 to 1024 px cut from the sample photographs (varied sizes, as in real folders)."""
    rng = np.random.default_rng(0)
    sources = photos(1024)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        h, w = rng.integers(512, 1025, size=2)
        top, left = rng.integers(0, 1025 - h), rng.integers(0, 1025 - w)
        path = folder / f"img_{i:04d}.jpg"
        cv2.imwrite(str(path), np.ascontiguousarray(image[top : top + h, left : left + w, ::-1]),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


def cpu_per_image(fn):
    """``fn()``'s result and the CPU seconds (all threads of this process) it took."""
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def naive_loop(model: torch.nn.Module, paths: list[Path]) -> list[float]:
    import open_clip
    from PIL import Image

    transform = open_clip.image_transform(224, is_train=False)
    out = []
    with torch.no_grad():
        for path in paths:
            x = transform(Image.open(path).convert("RGB"))[None]
            out.append(float(torch.sigmoid(model(x))[0]))
    return out


def set_native(on: bool) -> None:
    """Use the native core from now on, or not (what ``DGS_NATIVE=0`` does for a whole process)."""
    os.environ["DGS_NATIVE"] = "1" if on else "0"
    assert (native.module() is not None) == on, native.status()


def native_compare(model: torch.nn.Module, images: int, batch_size: int, rounds: int) -> None:
    """`dgs scan` with and without the native core, same folder, alternating rounds; then patch selection alone."""
    if native.module() is None:
        raise SystemExit(f"--native-compare needs the native core: {native.status()}")
    status = native.status()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        folder.mkdir()
        paths = make_folder(folder, images)
        spec = PreprocessSpec.patch_select()
        package = export_package(model, tmp / "tiny-patch.dgs", spec, photos()[:2])
        rates: dict[bool, list[float]] = {True: [], False: []}
        cpu_ms: dict[bool, list[float]] = {True: [], False: []}
        tables: dict[bool, str] = {}
        for r in range(rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                set_native(on)
                out = tmp / f"scan-{on}.csv"
                config = ScanConfig(paths=[str(folder)], model=str(package), out=str(out),
                                    batch_size=batch_size, progress=False, overwrite=True)
                cpu = time.process_time()
                summary = scan(config)
                cpu_ms[on].append((time.process_time() - cpu) * 1e3 / images)
                assert summary.scored == images, summary.line()
                rates[on].append(summary.images_per_second)
                tables[on] = out.read_text()
        assert tables[True] == tables[False], "the native core changed the scan's results"
        # Patch selection alone (no decoding, no inference), on the decoded images.
        decoded = [load_image(str(p)) for p in paths]
        select_ms: dict[bool, list[float]] = {True: [], False: []}
        for r in range(rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                set_native(on)
                start = time.perf_counter()
                for image in decoded:
                    crop_image(image, spec)
                select_ms[on].append((time.perf_counter() - start) * 1e3 / images)
    os.environ.pop("DGS_NATIVE")

    median = statistics.median
    print(header(f"dgs scan with and without the native core, {images} JPEGs of 512-1024 px, patch-select "
                 f"dgs-tiny-vit"))
    print(f"{status}; medians (and best) of {rounds} alternating rounds; the scans' results are identical\n")
    print(f"| dgs scan, patch-select, batch {batch_size} | images / s | CPU ms / image | patch selection alone, "
          "ms / image |")
    print("|---|---|---|---|")
    for on, name in ((False, "numpy entropies (DGS_NATIVE=0)"), (True, "native core")):
        print(f"| {name} | {median(rates[on]):.1f} ({max(rates[on]):.1f}) | {median(cpu_ms[on]):.1f} "
              f"({min(cpu_ms[on]):.1f}) | {median(select_ms[on]):.2f} ({min(select_ms[on]):.2f}) |")
    print(f"\nscan speed-up: {median(rates[True]) / median(rates[False]):.2f}x; patch selection alone: "
          f"{median(select_ms[False]) / median(select_ms[True]):.1f}x ({os.cpu_count()} cores; rounds, images/s: "
          f"native {', '.join(f'{x:.0f}' for x in rates[True])}; numpy {', '.join(f'{x:.0f}' for x in rates[False])})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--native-compare", action="store_true",
                        help="dgs scan of a patch-select package with and without the native core, instead")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of --native-compare")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_image_detector("dgs-tiny-vit", pretrained="none").eval()
    if args.native_compare:
        native_compare(model, args.images, args.batch_size, args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_folder(tmp, args.images)
        package = export_package(model, tmp / "tiny.dgs", PreprocessSpec.clip(), photos()[:2])

        start = time.perf_counter()
        naive = naive_loop(model, paths)
        naive_s = time.perf_counter() - start

        config = ScanConfig(paths=[str(tmp)], model=str(package), out=str(tmp / "scan.csv"),
                            batch_size=args.batch_size, progress=False)
        cpu = time.process_time()
        summary = scan(config)
        cpu_ms = (time.process_time() - cpu) * 1e3 / args.images
        assert summary.scored == args.images, summary.line()
        # Where the CPU goes: each stage alone, over the same files.
        detector = Detector(package, batch_size=args.batch_size)
        crops, decode_cpu = cpu_per_image(lambda: [crop_image(load_image(str(p)), detector.spec) for p in paths])
        batches = [normalize(np.stack(crops[i : i + args.batch_size]), detector.spec)
                   for i in range(0, len(crops), args.batch_size)]
        _, inference_cpu = cpu_per_image(lambda: [detector.backend.run(b) for b in batches])

    print(header(f"dgs scan vs naive loop, {args.images} JPEGs of 512-1024 px, dgs-tiny-vit"))
    print("| pipeline | images / s |")
    print("|---|---|")
    print(f"| naive: PIL + open_clip preprocess + torch eager, batch 1 | {args.images / naive_s:.1f} |")
    print(f"| dgs scan: OpenCV threads + ONNX Runtime CPU, batch {args.batch_size} | {summary.images_per_second:.1f} |")
    print(f"\nspeed-up: {summary.images_per_second / (args.images / naive_s):.1f}x "
          f"(torch {torch.__version__}, {torch.get_num_threads()} torch threads; mean naive probability "
          f"{np.mean(naive):.3f})")
    print(f"CPU time per image: dgs scan {cpu_ms:.1f} ms in all ({os.cpu_count()} cores); measured alone, decoding and "
          f"preprocessing {decode_cpu * 1e3 / args.images:.1f} ms, ONNX Runtime inference "
          f"{inference_cpu * 1e3 / args.images:.1f} ms")


if __name__ == "__main__":
    main()
