"""dgs against DGS-Net's own recipe, re-implemented here from its description rather than from dgs' code.

Two parts of DGS-Net's code decide what a trained detector is: the per-patch input transform and the stage-2
training step (LoRA layout, gradient surgery). Each is written out below the way DGS-Net writes it (one FFT per
patch, numpy's default argsort, a black-padded mosaic; separate q, k and v LoRA linear layers, attention spelled
out, the hook on f) and compared with dgs: identical mosaics, and the same gradients. Needs the trainer (torch).
"""

from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dgs_sdk import ImageTooSmall  # noqa: E402
from dgs_sdk.preprocess import PreprocessSpec, preprocess, select_patches  # noqa: E402
from dgs_trainer.lora import LoRAAttention, LoRAConfig  # noqa: E402
from dgs_trainer.methods.dgs import DGSNet  # noqa: E402
from dgs_trainer.models import create_clip  # noqa: E402

PATCH, GRID, N_LOW, N_HIGH = 32, 7, 24, 25
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (height, width) of the downscaled photos: 16, 12, 12 and 1 patch (black tiles and repeats), and 30 patches
# (repeats that fill the mosaic exactly).
SMALL_SIZES = [(128, 128), (100, 150), (64, 200), (40, 40), (192, 160)]


# --- The per-patch transform ---------------------------------------------------------------------------------------


def official_entropy(patch: np.ndarray) -> float:
    """Spectral entropy of one RGB patch as DGS-Net computes it: full FFT, fftshift, its own scale check."""
    grey = patch @ np.array([0.299, 0.587, 0.114])  # float64
    if grey.max() > 1:
        grey = grey / 255.0
    power = (np.abs(np.fft.fftshift(np.fft.fft2(grey))) ** 2).flatten()
    p = power / (power.sum() + 1e-12)
    return float(-np.sum(p * np.log2(p + 1e-12)))


def official_mosaic(image: np.ndarray, shuffle=lambda selected: None) -> np.ndarray:
    """DGS-Net's PatchSelectionTransform(32, 49) up to its ToTensor; ``shuffle`` stands for its random.shuffle."""
    h, w = image.shape[0] // PATCH * PATCH, image.shape[1] // PATCH * PATCH
    image = image[:h, :w]
    patches = [image[i : i + PATCH, j : j + PATCH] for i in range(0, h, PATCH) for j in range(0, w, PATCH)]
    order = np.argsort([official_entropy(p) for p in patches])
    selected = list(order[:N_LOW]) + list(order[-N_HIGH:])
    shuffle(selected)
    mosaic = np.zeros((GRID * PATCH, GRID * PATCH, 3), np.uint8)
    for slot, index in enumerate(selected[: GRID * GRID]):
        row, col = divmod(slot, GRID)
        mosaic[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = patches[index]
    return mosaic


def official_input(mosaic: np.ndarray) -> np.ndarray:
    """ToTensor then Normalize(ImageNet), in float32 as torchvision computes them: ``[3, 224, 224]``."""
    x = mosaic.astype(np.float32) / np.float32(255.0)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def photo_sizes(photos):
    """Each photo as shipped, then downscaled (INTER_AREA) to sizes under 224 pixels."""
    for name, image in photos.items():
        yield name, image
        for h, w in SMALL_SIZES:
            yield f"{name}@{h}x{w}", cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def tiles_of(mosaic: np.ndarray) -> np.ndarray:
    return mosaic.reshape(GRID, PATCH, GRID, PATCH, 3).swapaxes(1, 2).reshape(GRID * GRID, PATCH, PATCH, 3)


def test_pad_reproduces_the_official_transform_on_photos(photos):
    spec = PreprocessSpec.patch_select(small_images="pad")
    black_seen = repeats_seen = 0
    for name, image in photo_sizes(photos):
        expected = official_mosaic(image)
        np.testing.assert_array_equal(select_patches(image, spec), expected, err_msg=name)
        np.testing.assert_allclose(preprocess(image, spec), official_input(expected), rtol=0, atol=1e-6, err_msg=name)
        tiles = [bytes(t) for t in tiles_of(expected)]
        black_seen += tiles.count(bytes(PATCH * PATCH * 3))
        repeats_seen += len(tiles) - len(set(tiles))
    # The small sizes did exercise repeated patches and black tiles.
    assert black_seen >= len(photos) * (17 + 25 + 25 + 47) and repeats_seen > 0


def test_pad_training_shuffle_moves_only_the_selected_tiles(photos):
    spec = PreprocessSpec.patch_select(small_images="pad")
    for name, image in photo_sizes(photos):
        h, w = image.shape[0] // PATCH, image.shape[1] // PATCH
        n_selected = min(N_LOW, h * w) + min(N_HIGH, h * w)
        fixed = tiles_of(official_mosaic(image))
        shuffled = tiles_of(select_patches(image, spec, rng=np.random.default_rng(7)))
        assert sorted(map(bytes, shuffled)) == sorted(map(bytes, fixed)), name
        assert not shuffled[n_selected:].any(), name  # black tiles stay at the end, as after random.shuffle
        if len(set(map(bytes, fixed[:n_selected]))) > 1:
            assert not np.array_equal(shuffled, fixed), name


def test_images_under_one_patch_are_refused_not_blacked_out(photos):
    image = photos["chelsea"][:20, :300]
    assert not official_mosaic(image).any()  # DGS-Net's code: an all-black input
    with pytest.raises(ImageTooSmall, match="a 300x20 image is smaller than one 32x32 patch"):
        select_patches(image, PreprocessSpec.patch_select(small_images="pad"))


# --- The stage-2 training step --------------------------------------------------------------------------------------

CAPTIONS = ["a photo of a cat on a sofa", "a generated image of a city at night", "a portrait", "a landscape"]
RANK, ALPHA = 6, 6.0


class OfficialLinearLoRA(nn.Module):
    """One of q, k, v: x W^T + b + (dropout(x) @ (B @ A)^T) * alpha / sqrt(r), with its own dropout."""

    def __init__(self, weight, bias, lora_a, lora_b, dropout: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)  # [D, D]
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.lora_A = nn.Parameter(lora_a.detach().clone())  # [r, D]
        self.lora_B = nn.Parameter(lora_b.detach().clone())  # [D, r]
        self.scaling = ALPHA / math.sqrt(RANK)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return x @ self.weight.T + self.bias + (self.dropout(x) @ (self.lora_B @ self.lora_A).T) * self.scaling


class OfficialAttention(nn.Module):
    """Multi-head self-attention over separate q, k, v LoRA layers, written out; a drop-in for open_clip's."""

    def __init__(self, weights: dict, heads: int, out_proj: nn.Linear) -> None:
        super().__init__()
        dim = weights["in_proj_weight"].shape[1]
        rows = {"q": slice(0, dim), "k": slice(dim, 2 * dim), "v": slice(2 * dim, 3 * dim)}
        self.proj = nn.ModuleDict({
            name: OfficialLinearLoRA(weights["in_proj_weight"][rows[name]], weights["in_proj_bias"][rows[name]],
                                     weights[f"lora_A.{name}"], weights[f"lora_B.{name}"])
            for name in ("q", "k", "v")
        })
        self.heads = heads
        self.out_proj = copy.deepcopy(out_proj).requires_grad_(False)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        assert attn_mask is None and not need_weights  # the vision tower uses neither
        b, n, d = query.shape  # open_clip's blocks are batch-first
        q, k, v = (self.proj[name](query).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for name in ("q", "k", "v"))  # [B, H, N, D/H]
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)  # [B, H, N, N]
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, d)), None


def official_student(net, visual: nn.Module) -> nn.Module:
    """A copy of the pretrained encoder with each block's attention rebuilt in DGS-Net's layout from ``net``."""
    student = copy.deepcopy(visual)
    for index, block in enumerate(student.transformer.resblocks):
        ours = net.student.transformer.resblocks[index].attn
        weights = {key: value for key, value in ours.state_dict().items() if key.startswith("lora_")}
        weights["in_proj_weight"], weights["in_proj_bias"] = block.attn.in_proj_weight, block.attn.in_proj_bias
        block.attn = OfficialAttention(weights, block.attn.num_heads, block.attn.out_proj)
    return student


def official_stage2_step(student, clip, probe_fc, img_fc, text_fc, images, tokens, labels) -> torch.Tensor:
    """DGS-Net's stage-2 loss of one batch, backpropagated through its hook on f; returns f."""
    bce = nn.BCEWithLogitsLoss()
    f = student(images)
    with torch.no_grad():
        f0 = clip.visual(images)
        t = clip.encode_text(tokens)
    f0 = f0.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    loss_img = bce(img_fc(f).squeeze(1), labels)
    loss_img0 = bce(probe_fc(f0).squeeze(1), labels)
    loss_text = bce(text_fc(t).squeeze(1), labels)
    g_img = torch.autograd.grad(loss_img0, f0)[0].detach()
    g_text = torch.autograd.grad(loss_text, t, retain_graph=True)[0].detach()
    loss_help = torch.mean(torch.sum(f * torch.clamp(g_img, max=0.0), dim=1))
    h = F.relu(g_text)
    h = h / (torch.norm(h, p=2, dim=1, keepdim=True) + 1e-6)
    f.register_hook(lambda grad: grad - torch.einsum("bd,bd->b", grad, h).unsqueeze(1) * h)
    (loss_img + loss_text + 0.2 * loss_help).backward()
    return f


def test_stage2_gradients_equal_the_official_step():
    torch.manual_seed(0)
    clip = create_clip("dgs-tiny-vit", pretrained="none").float()
    net = DGSNet(clip, nn.Linear(clip.visual.output_dim, 1), LoRAConfig(rank=RANK, alpha=ALPHA, dropout=0.0)).train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at zero: move the student away from the teacher, as training does
        for module in net.student.modules():
            if isinstance(module, LoRAAttention):
                for b in module.lora_B.values():
                    b.copy_(torch.randn(b.shape, generator=g) * 0.05)
    images = torch.randn(4, 3, 224, 224, generator=g)
    tokens = open_clip.tokenize(CAPTIONS)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])

    student = official_student(net, clip.visual).train()
    img_fc, text_fc = copy.deepcopy(net.img_fc), copy.deepcopy(net.text_fc)
    official_f = official_stage2_step(student, clip, net.probe_fc, img_fc, text_fc, images, tokens, labels)
    net.zero_grad()
    net.losses(images, tokens, labels).loss.backward()

    with torch.no_grad():
        teacher_f = clip.visual(images)
        torch.testing.assert_close(net.student(images), official_f, atol=1e-5, rtol=1e-5)
    assert (official_f - teacher_f).abs().max() > 1e-2  # the LoRA updates change f
    pairs = []  # (name, our parameter, the official model's parameter)
    blocks = zip(net.student.transformer.resblocks, student.transformer.resblocks, strict=True)
    for i, (ours, theirs) in enumerate(blocks):
        for name in ("q", "k", "v"):
            pairs.append((f"block {i} A_{name}", ours.attn.lora_A[name], theirs.attn.proj[name].lora_A))
            pairs.append((f"block {i} B_{name}", ours.attn.lora_B[name], theirs.attn.proj[name].lora_B))
    for head, theirs in (("img_fc", img_fc), ("text_fc", text_fc)):
        for p in ("weight", "bias"):
            pairs.append((f"{head}.{p}", getattr(net, head).get_parameter(p), theirs.get_parameter(p)))
    assert len(pairs) == 6 * len(net.student.transformer.resblocks) + 4
    for name, ours, theirs in pairs:
        assert theirs.grad.abs().max() > 0, name
        scale = theirs.grad.abs().max().item()
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5 * scale, rtol=1e-5,
                                   msg=lambda message, name=name: f"{name}: {message}")
