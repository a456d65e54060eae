"""LoRA on open_clip's packed q/k/v projections: identity at start, per-third updates, exact merge."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from dgs_trainer.lora import LoRAAttention, LoRAConfig, apply_lora, lora_parameters, merge_lora  # noqa: E402
from dgs_trainer.models import create_clip  # noqa: E402


@pytest.fixture(scope="module")
def visual():
    torch.manual_seed(0)
    return create_clip("dgs-tiny-vit", pretrained="none").visual.eval()


@pytest.fixture
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def randomise(adapted: list[LoRAAttention], seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adapted:
            for b in module.lora_B.values():
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)


def test_fresh_lora_is_the_identity(visual, images):
    adapted_visual = copy.deepcopy(visual)
    adapted = apply_lora(adapted_visual, LoRAConfig())
    assert len(adapted) == len(visual.transformer.resblocks)
    with torch.no_grad():
        torch.testing.assert_close(adapted_visual(images), visual(images), atol=1e-6, rtol=0)


def test_merged_model_equals_the_adapted_model(visual, images):
    adapted_visual = copy.deepcopy(visual)
    adapted = apply_lora(adapted_visual, LoRAConfig(rank=4, alpha=8, dropout=0.5))
    randomise(adapted)
    adapted_visual.eval()
    with torch.no_grad():
        adapted_out = adapted_visual(images)
        assert (adapted_out - visual(images)).abs().max() > 1e-3  # the updates do something
        assert merge_lora(adapted_visual) == len(adapted)
        merged_out = adapted_visual(images)
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in adapted_visual.transformer.resblocks)
    torch.testing.assert_close(merged_out, adapted_out, atol=1e-5, rtol=0)


def test_each_projection_gets_its_own_third(visual, images):
    """LoRA on k alone equals adding B @ A * alpha / r to rows D..2D of in_proj_weight, and nothing else."""
    adapted_visual = copy.deepcopy(visual)
    (module,) = apply_lora(adapted_visual, LoRAConfig(rank=2, alpha=3, dropout=0.0, targets=("k",), blocks=(1,)))
    randomise([module])
    manual = copy.deepcopy(visual)
    dim = module.base.embed_dim
    with torch.no_grad():
        update = module.lora_B["k"] @ module.lora_A["k"] * (3 / 2)
        manual.transformer.resblocks[1].attn.in_proj_weight[dim : 2 * dim] += update
        torch.testing.assert_close(adapted_visual(images), manual(images), atol=1e-5, rtol=0)
        before = module.base.in_proj_weight.clone()
        merge_lora(adapted_visual)
        after = adapted_visual.transformer.resblocks[1].attn.in_proj_weight
    torch.testing.assert_close(after[:dim], before[:dim], atol=0, rtol=0)
    torch.testing.assert_close(after[2 * dim :], before[2 * dim :], atol=0, rtol=0)
    assert (after[dim : 2 * dim] - before[dim : 2 * dim]).abs().max() > 0


def test_only_lora_parameters_train(visual, images):
    adapted_visual = copy.deepcopy(visual)
    adapted = apply_lora(adapted_visual, LoRAConfig(targets=("q", "v"), blocks=(0, -1)))
    randomise(adapted)
    trainable = [p for p in adapted_visual.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(adapted_visual)}
    assert len(trainable) == 2 * 2 * 2  # two blocks, q and v, A and B
    adapted_visual.train()
    adapted_visual(images).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in adapted_visual.parameters() if not p.requires_grad)


def test_dropout_acts_only_in_training(visual, images):
    adapted_visual = copy.deepcopy(visual)
    randomise(apply_lora(adapted_visual, LoRAConfig(dropout=0.8)))
    adapted_visual.train()
    with torch.no_grad():
        assert not torch.equal(adapted_visual(images), adapted_visual(images))
        adapted_visual.eval()
        torch.testing.assert_close(adapted_visual(images), adapted_visual(images), atol=0, rtol=0)


def test_bad_configs_are_refused(visual):
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="subset of q, k, v"):
        LoRAConfig(targets=("o",))
    with pytest.raises(ValueError, match="block 9 does not exist"):
        apply_lora(copy.deepcopy(visual), LoRAConfig(blocks=(9,)))


def test_merged_encoder_exports_with_parity(tmp_path, visual, photos):
    from dgs_export import export_package
    from dgs_sdk import PreprocessSpec
    from dgs_trainer.models import ClipImageDetector

    adapted_visual = copy.deepcopy(visual)
    randomise(apply_lora(adapted_visual, LoRAConfig()))
    merge_lora(adapted_visual)
    detector = ClipImageDetector(adapted_visual, adapted_visual.output_dim)
    path = export_package(detector, tmp_path / "lora.dgs", PreprocessSpec.patch_select(), list(photos.values())[:3])
    assert path.exists()
