"""What loading a real-size model package costs, and the share of the checks that make a `.dgs` safe to load.

Exports an open_clip image detector with random weights (ViT-L-14 by default: a 1.1 GB graph), then, in fresh
processes, compares `Detector(path)` (sizes, streamed checksums, strict manifest, graph check, the run on a grey
image) with what loading did before those checks (read the member, create the ONNX Runtime session): time and
peak resident memory of each, and the cost of the two main checks measured alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import header, photos

CHILD = r"""
import json, sys, time, zipfile
path, mode = sys.argv[1], sys.argv[2]

def peak_gib():  # this process's high-water mark (VmHWM starts afresh at exec; ru_maxrss would carry the parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024**2

t0 = time.perf_counter()
if mode == "unchecked":  # what loading cost before the checks: read the member, hand it to ONNX Runtime
    import onnxruntime
    with zipfile.ZipFile(path) as zf:
        data = zf.read("model.onnx")
    onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_gib": peak_gib()}))
    sys.exit()
from dgs_sdk import Detector
from dgs_sdk.backends import smoke_check
from dgs_sdk.onnx_graph import check_onnx_graph
detector = Detector(path, device="cpu")  # every check: sizes, checksums, manifest, graph, the run on two grey images
seconds = time.perf_counter() - t0
peak = peak_gib()
m = detector.manifest
t1 = time.perf_counter()
check_onnx_graph(detector.package.model_bytes, m.input_name, m.output_name, m.preprocess.size, path)
t2 = time.perf_counter()
smoke_check(detector.backend)
t3 = time.perf_counter()
print(json.dumps({"seconds": seconds, "peak_gib": peak, "graph_check": t2 - t1, "smoke": t3 - t2}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-L-14")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from dgs_export import export_package
    from dgs_sdk import PreprocessSpec
    from dgs_trainer import build_image_detector

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = build_image_detector(args.arch, pretrained="none").eval()
        path = Path(tmp) / "model.dgs"
        export_package(model, path, PreprocessSpec.clip(), photos()[:2], architecture={"arch": args.arch})
        del model
        size = path.stat().st_size
        runs: dict[str, list[dict]] = {"unchecked": [], "checked": []}
        for _ in range(args.repeats):
            for mode in runs:  # interleaved, in fresh processes
                done = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True,
                                      text=True, check=True)
                runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def best(mode: str, key: str) -> float:
        return min(run[key] for run in runs[mode])

    print(header(f"Loading a {args.arch} model package ({size / 1e9:.2f} GB), random weights, CPU"))
    print(f"| load (best of {args.repeats} fresh processes each) | seconds | peak resident memory (GiB) |")
    print("|---|---|---|")
    print(f"| zip member read + ONNX Runtime session, no checks | {best('unchecked', 'seconds'):.2f} | "
          f"{best('unchecked', 'peak_gib'):.2f} |")
    print(f"| `Detector(path)`: every check of an untrusted package | {best('checked', 'seconds'):.2f} | "
          f"{best('checked', 'peak_gib'):.2f} |")
    print(f"\nof the checks, measured alone: the graph check (parse, external data, interface) "
          f"{best('checked', 'graph_check'):.2f} s, the run on two grey images {best('checked', 'smoke'):.2f} s")


if __name__ == "__main__":
    main()
