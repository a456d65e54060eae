"""LoRA on open_clip's packed q/k/v projections: identity at start, per-third updates, scaling, dropout, exact merge."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
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


@pytest.mark.parametrize("scaling", ["sqrt", "linear"])
def test_merged_model_equals_the_adapted_model(visual, images, scaling):
    adapted_visual = copy.deepcopy(visual)
    adapted = apply_lora(adapted_visual, LoRAConfig(rank=4, alpha=8, dropout=0.5, scaling=scaling))
    randomise(adapted)
    adapted_visual.eval()
    with torch.no_grad():
        adapted_out = adapted_visual(images)
        assert (adapted_out - visual(images)).abs().max() > 1e-3  # the updates do something
        assert merge_lora(adapted_visual) == len(adapted)
        merged_out = adapted_visual(images)
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in adapted_visual.transformer.resblocks)
    torch.testing.assert_close(merged_out, adapted_out, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("scaling", "scale"), [("sqrt", 3 / math.sqrt(2)), ("linear", 3 / 2)])
def test_each_projection_gets_its_own_third(visual, images, scaling, scale):
    """LoRA on k alone equals adding B @ A * scale to rows D..2D of in_proj_weight, and nothing else."""
    adapted_visual = copy.deepcopy(visual)
    config = LoRAConfig(rank=2, alpha=3, dropout=0.0, targets=("k",), blocks=(1,), scaling=scaling)
    (module,) = apply_lora(adapted_visual, config)
    randomise([module])
    manual = copy.deepcopy(visual)
    dim = module.base.embed_dim
    with torch.no_grad():
        update = module.lora_B["k"] @ module.lora_A["k"] * scale
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


def test_scaling_rules():
    # DGS-Net's rule is the default: alpha / sqrt(r), 2.449 at r = alpha = 6; the LoRA paper's gives 1 there.
    assert LoRAConfig().scaling == "sqrt"
    assert LoRAConfig(rank=6, alpha=6).scale == pytest.approx(2.449, abs=1e-3)
    assert LoRAConfig(rank=6, alpha=6, scaling="linear").scale == 1.0
    assert LoRAConfig(rank=4, alpha=8, scaling="linear").scale == 2.0
    assert LoRAConfig(rank=4, alpha=8).scale == 4.0
    base = nn.MultiheadAttention(16, 2)
    assert LoRAAttention(base, LoRAConfig(rank=4, alpha=8)).scaling == 4.0


def identical_projections(dim: int = 16, heads: int = 2, dropout: float = 0.5) -> LoRAAttention:
    """A LoRA attention whose q, k and v weights, biases and LoRA factors are all the same."""
    torch.manual_seed(3)
    base = nn.MultiheadAttention(dim, heads, batch_first=True)
    module = LoRAAttention(base, LoRAConfig(rank=4, alpha=4, dropout=dropout))
    with torch.no_grad():
        base.in_proj_weight.copy_(base.in_proj_weight[:dim].repeat(3, 1))
        base.in_proj_bias.copy_(torch.randn(dim).repeat(3))
        for name in ("k", "v"):
            module.lora_A[name].copy_(module.lora_A["q"])
        for b in module.lora_B.values():
            b.copy_(torch.ones_like(b))
    return module


def attention_inputs(module: LoRAAttention, x: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, ...]:
    """The q, k and v that ``module`` hands to scaled dot-product attention for ``x``."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q, k, v))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        module(x)
    monkeypatch.undo()
    (qkv,) = seen
    return qkv


def test_each_projection_draws_its_own_dropout_mask(monkeypatch):
    """With identical q, k, v weights the three differ only through dropout: one shared mask would keep them equal."""
    module = identical_projections()
    x = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(4))
    module.eval()
    q, k, v = attention_inputs(module, x, monkeypatch)
    torch.testing.assert_close(k, q, atol=1e-6, rtol=0)
    torch.testing.assert_close(v, q, atol=1e-6, rtol=0)
    module.train()
    q, k, v = attention_inputs(module, x, monkeypatch)
    for a, b in ((q, k), (q, v), (k, v)):
        assert (a - b).abs().max() > 0.1
    # Without dropout, training mode is as deterministic as eval.
    module = identical_projections(dropout=0.0).train()
    q, k, v = attention_inputs(module, x, monkeypatch)
    torch.testing.assert_close(k, q, atol=1e-6, rtol=0)
    torch.testing.assert_close(v, q, atol=1e-6, rtol=0)


def test_state_dict_keys_are_those_of_earlier_checkpoints():
    module = LoRAAttention(nn.MultiheadAttention(16, 2), LoRAConfig(rank=4))
    lora_keys = {key for key in module.state_dict() if key.startswith("lora_")}
    assert lora_keys == {"lora_A.q", "lora_A.k", "lora_A.v", "lora_B.q", "lora_B.k", "lora_B.v"}
    assert set(module.state_dict()) - lora_keys == {f"base.{key}" for key in nn.MultiheadAttention(16, 2).state_dict()}


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
    with pytest.raises(ValueError, match="LoRA scaling must be 'sqrt' .* or 'linear'.*'quadratic'"):
        LoRAConfig(scaling="quadratic")
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
