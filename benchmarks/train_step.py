"""Training step cost of DGS-Net, its LoRA-only ablation and MiraGe: time per step, peak GPU memory, images/s.

Meant for a GPU: ViT-L-14 or ViT-B-16 at random initialisation (the step costs the same with pretrained
weights), batch 32, bf16 autocast, each method with its own optimizer (Adam for lora and dgs, SGD for mirage).
`--arch dgs-tiny-vit --device cpu --prompt-depth 2` runs the same code as a quick check of the script itself.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import header
from dgs_trainer.lora import LoRAConfig
from dgs_trainer.methods.dgs import DGSNet
from dgs_trainer.methods.lora import LoRAClassifier
from dgs_trainer.methods.mirage import MiraGe, MiraGeConfig, PromptConfig
from dgs_trainer.models import create_clip


def step_cost(method, batch: dict, device: torch.device, steps: int, warmup: int) -> tuple[float, float]:
    """Seconds per optimizer step and peak memory (GiB, CUDA only) of ``method`` on a fixed batch."""
    if isinstance(method, MiraGe):
        optimizer = torch.optim.SGD(method.trainable_parameters(), lr=3.5e-3, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-4)
    method.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = method.training_loss(batch["images"], batch["labels"], batch["indices"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-L-14")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--prompt-depth", type=int, default=9, help="MiraGe's prompt depth")
    parser.add_argument("--methods", default="lora,dgs,mirage")
    args = parser.parse_args()

    import open_clip

    device = torch.device(args.device)
    torch.manual_seed(0)
    clip = create_clip(args.arch, pretrained="none", device=str(device))
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    tokens = open_clip.get_tokenizer(args.arch)(["a photo of a cat"] * args.batch_size).to(device)
    batch = {
        "images": torch.randn(args.batch_size, 3, size, size, device=device),
        "labels": (torch.arange(args.batch_size, device=device) % 2).float(),
        "indices": torch.arange(args.batch_size, device=device),
    }
    lora = LoRAConfig()  # the published r = alpha = 6, alpha/sqrt(r), dropout 0.8 on q, k, v of every block
    prompts = MiraGeConfig(prompt=PromptConfig(depth=args.prompt_depth))
    builders = {
        "lora": lambda: LoRAClassifier(clip.visual, lora),
        "dgs": lambda: DGSNet(clip, torch.nn.Linear(clip.visual.output_dim, 1), lora, caption_tokens=tokens),
        "mirage": lambda: MiraGe(clip, open_clip.get_tokenizer(args.arch), prompts),
    }
    results = {}
    for name in args.methods.split(","):
        build = builders[name]
        method = build().to(device)
        results[name] = step_cost(method, batch, device, args.steps, args.warmup)
        del method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(header(f"training step, {args.arch}, batch {args.batch_size}, {gpu}"))
    print("| method | ms / step | images / s | peak GPU memory (GiB) |")
    print("|---|---|---|---|")
    for name, (seconds, peak) in results.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {args.batch_size / seconds:.1f} | {peak:.2f} |")
    if {"dgs", "lora"} <= set(results):
        print(f"\nDGS-Net step time / LoRA step time: {results['dgs'][0] / results['lora'][0]:.2f} (target <= 1.4)")


if __name__ == "__main__":
    main()
