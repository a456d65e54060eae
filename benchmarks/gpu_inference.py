"""Inference of the exported network on a GPU with torch: images/s at several batch sizes in float32, FP16 and
BF16, and the fraction of the GPU's dense FP16 tensor peak that FP16 reaches.

The network is the one `dgs export` writes for a DGS-Net run (the CLIP image encoder, LoRA merged, and the
linear head), at random initialisation: the cost is that of trained weights. Preprocessing is not included
(see scan_throughput.py); inputs are already on the GPU. Eager mode pays one launch per kernel, which bounds
small batches; `--cuda-graphs` replays each batch as one CUDA graph, closer to how an inference engine runs.
FLOPs are counted by torch's FlopCounterMode (a multiply-add is two FLOPs).
`--archs dgs-tiny-vit --device cpu --batches 1,2` runs the same code as a quick check of the script itself.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import header
from dgs_trainer.models import build_image_detector

# Dense (no sparsity) FP16 tensor-core peaks from NVIDIA's data sheets, in FLOP/s, by device name.
FP16_PEAK = {
    "NVIDIA H100 80GB HBM3": 989.4e12,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.5e12,
    "NVIDIA H100 NVL": 835.5e12,
    "NVIDIA H200": 989.4e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def flops_per_image(model: torch.nn.Module, size: int, device: torch.device) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def graphed(model: torch.nn.Module, batch: torch.Tensor, warmup: int):
    """``model`` on ``batch`` captured as a CUDA graph: one launch per batch, as an inference engine runs it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(warmup):
            model(batch)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        model(batch)
    return graph.replay


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, seconds: float, warmup: int,
                      cuda_graph: bool) -> float:
    run = graphed(model, batch, warmup) if cuda_graph else lambda: model(batch)
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        if batch.is_cuda:
            torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run()
            runs += 1
            if batch.is_cuda and runs % 8 == 0:
                torch.cuda.synchronize()
        if batch.is_cuda:
            torch.cuda.synchronize()
        return runs * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", default="ViT-B-16,ViT-L-14")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each batch as a CUDA graph (no per-kernel launch cost, as an engine runs)")
    args = parser.parse_args()

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = FP16_PEAK.get(name)
    print(header(f"Inference on {name} with torch {torch.__version__}"))
    peak_text = f"{peak / 1e12:.1f} TFLOP/s dense FP16 (data sheet)" if peak else "not known for this device"
    mode = "CUDA graphs" if args.cuda_graphs else "eager"
    print(f"- device: {name}; FP16 peak {peak_text}; float32 matmuls without TF32; {mode}\n")
    print("| arch | GFLOP/image | precision | batch | images/s | ms/batch | achieved TFLOP/s | of FP16 peak |")
    print("|---|---|---|---|---|---|---|---|")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        model = build_image_detector(arch, pretrained="none").to(device).eval()
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        flops = flops_per_image(model, size, device)
        for precision in args.precisions.split(","):
            typed = model.to(DTYPES[precision])
            for batch_size in map(int, args.batches.split(",")):
                batch = torch.randn(batch_size, 3, size, size, device=device, dtype=DTYPES[precision])
                rate = images_per_second(typed, batch, args.seconds, args.warmup, args.cuda_graphs)
                achieved = rate * flops
                share = f"{achieved / peak:.1%}" if peak and precision == "fp16" else ""
                print(f"| {arch} | {flops / 1e9:.1f} | {precision} | {batch_size} | {rate:,.0f} | "
                      f"{batch_size / rate * 1e3:.2f} | {achieved / 1e12:.1f} | {share} |", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
