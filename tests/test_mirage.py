"""MiraGe: the discriminative loss, the memory bank, what trains, the prompted encoders, runs, resume and export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import open_clip  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from conftest import tiny_config  # noqa: E402
from dgs_export.run_export import ExportConfig, export_run  # noqa: E402
from dgs_sdk import Detector, ModelPackage  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_trainer.eval_run import EvalConfig, evaluate_run  # noqa: E402
from dgs_trainer.methods.mirage import (  # noqa: E402
    MemoryBank,
    MiraGe,
    MiraGeConfig,
    PromptConfig,
    discriminative_loss,
    prompted_image_features,
)
from dgs_trainer.models import create_clip  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402

F = torch.nn.functional


def tiny_mirage(depth: int = 2, tokens: int = 2, context: str = "a photo of a", **config) -> MiraGe:
    torch.manual_seed(0)
    return MiraGe(create_clip("dgs-tiny-vit"), open_clip.get_tokenizer("dgs-tiny-vit"),
                  MiraGeConfig(prompt=PromptConfig(tokens=tokens, depth=depth, context=context), **config))


def test_discriminative_loss_matches_a_loop_over_anchors_and_positives():
    gen = torch.Generator().manual_seed(1)
    unit = lambda n: F.normalize(torch.randn(n, 8, generator=gen, dtype=torch.float64), dim=-1)  # noqa: E731
    h, bank, anchors = unit(5), unit(4), unit(2)
    labels, bank_labels = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([1, 1, 0, 1])
    tau = 0.07
    members = list(zip(torch.cat([h, bank, anchors]), [*labels.tolist(), *bank_labels.tolist(), 0, 1], strict=True))
    per_image = []
    for i in range(len(h)):
        others = [(z, y) for j, (z, y) in enumerate(members) if j != i]  # every member but the image itself
        denominator = sum(math.exp(float(h[i] @ z) / tau) for z, _ in others)
        terms = [-math.log(math.exp(float(h[i] @ z) / tau) / denominator) for z, y in others if y == labels[i]]
        per_image.append(sum(terms) / len(terms))
    expected = sum(per_image) / len(per_image)
    got = discriminative_loss(h, labels, bank, bank_labels, anchors, tau)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # Without a bank the anchors still give every image a positive.
    alone = discriminative_loss(h[:1], labels[:1], bank[:0], bank_labels[:0], anchors, tau)
    margin = float(h[0] @ anchors[1] - h[0] @ anchors[0]) / tau  # the other anchor against its own
    assert float(alone) == pytest.approx(math.log(1 + math.exp(margin)))


def test_memory_bank_is_fifo_and_stores_detached_tensors():
    bank = MemoryBank(size=5, dim=3)
    assert len(bank) == 0 and bank.contents()[0].shape == (0, 3)
    source = torch.arange(21.0).reshape(7, 3).requires_grad_()
    rows = source * 1.0  # part of a graph
    bank.push(rows[:3], torch.tensor([0, 1, 0]))
    bank.push(rows[3:7], torch.tensor([1, 1, 0, 1]))
    embeddings, labels = bank.contents()
    torch.testing.assert_close(embeddings, source.detach()[2:7])  # the oldest two were dropped, order kept
    assert labels.tolist() == [0, 1, 1, 0, 1]
    assert not embeddings.requires_grad and embeddings.grad_fn is None and not bank.embeddings.requires_grad
    bank.push(rows.detach()[:6] + 100, torch.zeros(6, dtype=torch.long))  # more than it holds at once
    torch.testing.assert_close(bank.contents()[0], source.detach()[1:6] + 100)
    empty = MemoryBank(size=0, dim=3)
    empty.push(rows, torch.zeros(7, dtype=torch.long))
    assert len(empty) == 0


def test_gradients_reach_only_prompts_and_couplings():
    model = tiny_mirage(memory_size=4).train()
    images, labels = torch.randn(3, 3, 224, 224), torch.tensor([0.0, 1.0, 1.0])
    for _ in range(2):  # the second batch meets the first one in the memory bank
        loss, logs = model.training_loss(images, labels, torch.arange(3))
        model.zero_grad()
        loss.backward()
    assert {"loss", "ce", "dis"} <= set(logs) and len(model.memory) == 4
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == {name for name, p in model.named_parameters() if name.startswith("prompts.")}
    assert trained == {"prompts.context", "prompts.deep_context", *(f"prompts.couplings.{i}.{w}"
                                                                     for i in range(2) for w in ("weight", "bias"))}
    assert all(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if name in trained)
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.prompts.parameters()}
    assert not model.memory.embeddings.requires_grad


def test_prompted_text_with_the_phrase_as_context_is_clip_text():
    """At depth 1 the learnable context starts as the phrase's own word embeddings: the anchors are CLIP's."""
    model = tiny_mirage(depth=1, tokens=2, context="a photo of a")
    tokens = open_clip.get_tokenizer("dgs-tiny-vit")(["a photo of a real.", "a photo of a fake."])
    assert torch.equal(model.class_tokens, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model.anchors(), model.clip.encode_text(tokens, normalize=True))
    # Deeper layers take their own context at the same positions.
    deep = tiny_mirage(depth=2)
    with torch.no_grad():
        before = deep.anchors()
        deep.prompts.deep_context.add_(torch.randn_like(deep.prompts.deep_context))
        assert not torch.allclose(deep.anchors(), before, atol=1e-3)
    # A phrase shorter than the context is padded with placeholder words, initialised at random.
    short = tiny_mirage(tokens=3, context="photo")
    words = open_clip.get_tokenizer("dgs-tiny-vit")(["X X photo real."])
    assert torch.equal(short.class_tokens[0], words[0])


def test_prompted_image_features_follow_the_encoder():
    """Depth 1, computed independently: prompts appended after the positional embedding, the whole transformer,
    then the class token."""
    clip = create_clip("dgs-tiny-vit").eval()
    visual = clip.visual
    images, prompts = torch.randn(2, 3, 224, 224), torch.randn(1, 2, visual.transformer.width)
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], 1) + visual.positional_embedding
        x = visual.ln_pre(torch.cat([x, prompts[0].expand(2, -1, -1)], 1))
        expected = visual.ln_post(visual.transformer(x)[:, 0]) @ visual.proj
        torch.testing.assert_close(prompted_image_features(visual, images, prompts), expected)
        # Deep prompts change what the deeper layers see.
        deeper = torch.cat([prompts, torch.randn(1, 2, visual.transformer.width)])
        assert not torch.allclose(prompted_image_features(visual, images, deeper), expected)


def test_prompt_depth_beyond_the_encoder_is_a_clear_error(tmp_path, dataset):
    with pytest.raises(ValueError, match="prompt depth 9 exceeds the encoder's layers"):
        tiny_mirage(depth=9)
    result = CliRunner().invoke(main, [
        "train", "--method", "mirage", "--arch", "dgs-tiny-vit", "--pretrained", "none", "--device", "cpu",
        "--workers", "0", "--data", str(dataset), "--out", str(tmp_path / "run"), "--epochs", "2",
    ])
    assert result.exit_code == 2 and "prompt depth 9 exceeds" in result.output and "Traceback" not in result.output
    warm = CliRunner().invoke(main, ["train", "--method", "mirage", "--epochs", "1", "--data", str(dataset),
                                     "--out", str(tmp_path / "r2")])
    assert warm.exit_code == 2 and "warmup_epochs" in warm.output
    slow = CliRunner().invoke(main, ["train", "--method", "mirage", "--lr", "1e-6", "--data", str(dataset),
                                     "--out", str(tmp_path / "r3")])
    assert slow.exit_code == 2 and "warmup_lr must be between 0 and lr" in slow.output


@pytest.fixture(scope="module")
def mirage_run(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("runs") / "mirage run"
    config = tiny_config(dataset, out, method="mirage", prompt_depth=2, epochs=3, warmup_epochs=1, lr=0.05,
                         memory_size=8)
    return fit(config, progress=False)


def test_mirage_run_follows_its_schedule_and_keeps_only_prompts(mirage_run):
    record = json.loads((mirage_run / "config.json").read_text())
    assert record["preprocess"]["transform"] == "clip"  # MiraGe's default input
    steps = [json.loads(line) for line in (mirage_run / "metrics.jsonl").read_text().splitlines()]
    lrs = [s["lr"] for s in steps if s["kind"] == "train"]
    assert len(lrs) == 18 and lrs[:6] == [1e-5] * 6  # 24 images / batch 4, three epochs, the first one warm-up
    assert lrs[6] == pytest.approx(0.05) and all(a > b for a, b in zip(lrs[6:], lrs[7:], strict=False))
    assert all({"ce", "dis"} <= set(s) and np.isfinite(s["loss"]) for s in steps if s["kind"] == "train")
    state = load_file(str(mirage_run / "model.safetensors"))
    assert {k.split(".")[0] for k in state} == {"prompts", "memory"}
    assert int(state["memory.count"]) == 72


def test_mirage_package_scores_like_the_evaluation(tmp_path, mirage_run, dataset):
    report = evaluate_run(EvalConfig(run=str(mirage_run), data=str(dataset), device="cpu", workers=0,
                                     calibrate=True), progress=False)
    package = export_run(ExportConfig(run=str(mirage_run), out=str(tmp_path / "mirage.dgs")))
    manifest = ModelPackage.load(package).manifest
    assert manifest.architecture["head"] == "text anchors (real, fake)" and not manifest.architecture["lora_merged"]
    assert manifest.architecture["prompt_depth"] == 2 and manifest.provenance["method"] == "mirage"
    assert manifest.threshold_source == "calibrated"
    paths = sorted(report["probabilities"])
    results = Detector(package).predict(paths)
    for path, result in zip(paths, results, strict=True):
        assert result.ok, result.error
        assert result.probability == pytest.approx(report["probabilities"][path], abs=1e-4), path
    assert len({round(r.probability, 6) for r in results}) > 1  # scores depend on the image


def test_interrupted_mirage_run_resumes_to_the_same_state(tmp_path, dataset, monkeypatch):
    """Mid-epoch, after the warm-up: prompts, memory bank, momentum and the schedule all come back."""
    def config(name):
        return tiny_config(dataset, tmp_path / name, method="mirage", prompt_depth=2, epochs=3, save_every=1,
                           lr=0.05, memory_size=8)

    whole = load_file(str(fit(config("whole"), progress=False) / "model.safetensors"))
    real_step, calls = torch.optim.SGD.step, {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        fit(config("cut"), progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    resumed = load_file(str(fit(config("cut"), resume=True, progress=False) / "model.safetensors"))
    assert set(resumed) == set(whole)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_ablation_flags_through_the_cli(tmp_path, dataset):
    runner = CliRunner()
    out = tmp_path / "shallow"
    result = runner.invoke(main, [
        "train", "--method", "mirage", "--arch", "dgs-tiny-vit", "--pretrained", "none", "--device", "cpu",
        "--workers", "0", "--batch-size", "8", "--data", str(dataset), "--out", str(out), "--epochs", "1",
        "--warmup-epochs", "0", "--prompt-depth", "1", "--dis-weight", "0", "--memory-size", "0", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps and all("dis" not in s and s["loss"] == s["ce"] for s in steps)
    state = load_file(str(out / "model.safetensors"))
    assert state["prompts.deep_context"].shape[0] == 0 and state["memory.embeddings"].shape[0] == 0
    help_text = runner.invoke(main, ["train", "--help"]).output
    for flag in ("--prompt-depth", "--prompt-tokens", "--dis-weight", "--memory-size", "--temperature",
                 "--warmup-epochs", "--momentum"):
        assert flag in help_text

