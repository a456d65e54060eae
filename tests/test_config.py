"""Run configuration declared once: nested dataclasses, --config files, flags as overrides, runs written before
the nesting, QuickGELU for OpenAI weights, the method registry and the one error family."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from click.testing import CliRunner  # noqa: E402

from conftest import tiny_config  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_sdk.errors import DgsError  # noqa: E402
from dgs_trainer.config import TrainConfig  # noqa: E402
from dgs_trainer.errors import ConfigError, TrainError  # noqa: E402
from dgs_trainer.flags import config_from_flags, option_flags  # noqa: E402
from dgs_trainer.methods import METHODS  # noqa: E402
from dgs_trainer.methods.dgs import DGSConfig  # noqa: E402
from dgs_trainer.methods.probe import ProbeMethod  # noqa: E402
from dgs_trainer.models import create_clip, trained_with_quick_gelu  # noqa: E402
from dgs_trainer.run_folder import RunFolder  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_config_survives_its_dict_and_every_method_has_its_own_options():
    for name, method in METHODS.items():
        config = TrainConfig(data="d", out="o", method=name, pretrained="none")
        assert isinstance(config.options, method.options_type)
        again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config
    dgs = TrainConfig(data="d", out="o", pretrained="none").to_dict()
    assert dgs["options"]["lora"] == {"rank": 6, "alpha": 6.0, "scaling": "sqrt", "dropout": 0.8,
                                      "targets": ["q", "k", "v"], "blocks": None}
    assert dgs["small_images"] == "pad" and dgs["preprocess"] == "patch-select"


def test_flags_override_the_config_file_and_land_nested(tmp_path, dataset):
    file = tmp_path / "run.yaml"
    file.write_text(f"""
data: {dataset}
out: {tmp_path / 'from-file'}
arch: dgs-tiny-vit
pretrained: none
batch_size: 4
options:
  epochs: 3
  captions: {dataset / 'captions.json'}
  lora:
    rank: 4
    targets: [q, v]
""")
    config = config_from_flags({"lora_rank": 2, "lora_blocks": "0,-1", "out": str(tmp_path / "flags")}, file)
    assert (config.options.lora.rank, config.options.lora.targets, config.options.lora.blocks) == (2, ("q", "v"),
                                                                                                    (0, -1))
    assert config.options.epochs == 3 and config.out == str(tmp_path / "flags") and config.batch_size == 4
    assert config.options.lora.alpha == 6.0  # untouched keys keep the method's defaults


def test_a_run_is_reproduced_from_its_config_json(tmp_path, dataset):
    first = tiny_config(dataset, tmp_path / "first", method="probe", epochs=2, seed=3)
    fit(first, progress=False)
    result = invoke("train", "--config", tmp_path / "first" / "config.json", "--out", tmp_path / "second",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    second = tmp_path / "second"
    assert RunFolder(second).read_config().to_dict() == {**first.to_dict(), "out": str(second)}
    assert (tmp_path / "first" / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--method", "dgs", "--prompt-depth", "2"],
     "--prompt-depth does not apply to method dgs (it is an option of mirage)"),
    (["--method", "mirage", "--lora-rank", "2"], "--lora-rank does not apply to method mirage"),
    (["--lora-blocks", "one"], "--lora-blocks must be comma-separated integers or 'all'"),
    (["--lora-rank", "0"], "options.lora: LoRA rank must be at least 1"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
])
def test_bad_flags_are_named(tmp_path, dataset, args, message):
    result = invoke("train", "--data", dataset, "--out", tmp_path / "run", "--arch", "dgs-tiny-vit", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    ("options: {lora: {rnak: 4}}", "unknown key options.lora.rnak"),
    ("options: {lora: {rank: '4'}}", "options.lora.rank must be an integer, got '4'"),
    ("options: {lora: [4]}", "options.lora must be a mapping"),
    ("batch_size: true", "batch_size must be an integer, got True"),
    ("colour: red", "unknown key colour"),
    ("method: gan", "method 'gan' is unknown"),
    ("[1, 2]", "expected a mapping of settings"),
    ("options: {epochs: 1e999}", "options.epochs must be an integer"),
    ("{{{", "not valid YAML or JSON"),
    ("1: one\ncolour: red", "unknown key 1"),  # keys of mixed types
])
def test_a_bad_config_file_is_named_with_its_key(tmp_path, dataset, text, message):
    file = tmp_path / "bad config.yaml"
    file.write_text(text)
    result = invoke("train", "--config", file, "--data", dataset, "--out", tmp_path / "run")
    assert result.exit_code == 2 and message in result.output and str(file) in result.output, result.output


def test_a_config_file_of_nested_aliases_is_refused_at_once(tmp_path, dataset):
    """YAML aliases make a 1 kB file hold 10^9 strings: the message quotes a few of them, and returns at once."""
    levels = ["&a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"&{b} [{', '.join(['*' + a] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    file = tmp_path / "aliases.yaml"
    file.write_text(f"batch_size: [{', '.join(levels)}]")
    result = invoke("train", "--config", file, "--data", dataset, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "batch_size must be an integer, got [[" in result.output, result.output
    assert len(result.output) < 1000


def test_resume_refuses_changed_settings(tmp_path, dataset):
    result = invoke("train", "--resume", tmp_path, "--lr", "0.1")
    assert result.exit_code == 2 and "--lr cannot change them" in result.output


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory, dataset):
    """A LoRA run trained as runs were before settings were nested (alpha/r, GELU, small images resized), whose
    config.json is then rewritten in that earlier flat form."""
    out = tmp_path_factory.mktemp("legacy") / "run"
    fit(tiny_config(dataset, out, method="lora", lora_rank=4, lora_alpha=8.0, lora_scaling="linear",
                    small_images="resize", lora_blocks="0,1"), progress=False)
    record = json.loads((out / "config.json").read_text())
    config = record["config"]
    flat = {key: config[key] for key in ("data", "out", "method", "arch", "pretrained", "val", "split", "val_split",
                                         "batch_size", "accumulate", "preprocess", "hflip", "device", "workers",
                                         "seed", "save_every", "tensorboard")}
    flat.update(epochs=None, probe_epochs=3, lr=config["options"]["lr"], beta1=0.9, beta2=0.999, lora_rank=4,
                lora_alpha=8.0, lora_dropout=0.8, lora_targets="q,k,v", lora_blocks="0,1", help_weight=0.2,
                prompt_tokens=2, prompt_depth=9, prompt_context="a photo of a", dis_weight=0.1, memory_size=64,
                temperature=0.07, momentum=0.9, weight_decay=5e-4, warmup_epochs=1, warmup_lr=1e-5, captions=None,
                caption_template="a {label} photo")
    record["preprocess"].pop("small_images")
    with torch.no_grad():
        expected = RunFolder(out).load().model(torch.ones(2, 3, 224, 224))
    (out / "config.json").write_text(json.dumps({"config": flat, "preprocess": record["preprocess"],
                                                 "provenance": record["provenance"]}))
    return out, expected


def test_a_run_written_before_nesting_keeps_its_behaviour(legacy_run):
    out, expected = legacy_run
    loaded = RunFolder(out).load()
    lora = loaded.config.options.lora
    assert (lora.rank, lora.alpha, lora.scaling, lora.blocks) == (4, 8.0, "linear", (0, 1))
    assert loaded.config.quick_gelu is False and loaded.spec.small_images == "resize"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(torch.ones(2, 3, 224, 224)), expected, rtol=0, atol=0)


def test_a_run_written_before_nesting_cannot_be_resumed(legacy_run):
    result = invoke("train", "--resume", legacy_run[0])
    assert result.exit_code == 2 and "written by an earlier version of dgs" in result.output, result.output


def test_quick_gelu_follows_the_pretrained_weights(monkeypatch):
    assert trained_with_quick_gelu("ViT-L-14", "openai") and trained_with_quick_gelu("ViT-B-16", "openai")
    assert not trained_with_quick_gelu("ViT-L-14", "laion2b_s32b_b82k")
    assert not trained_with_quick_gelu("ViT-L-14", "none") and not trained_with_quick_gelu("ViT-B-32", __file__)
    assert TrainConfig(data="d", out="o", method="mirage").quick_gelu is True  # ViT-L-14 openai, the default
    assert TrainConfig(data="d", out="o", quick_gelu=False).quick_gelu is False  # asked for explicitly

    seen = {}

    def no_download(name, pretrained=None, **kwargs):  # the hub cannot be reached: record what would be built
        seen.update(name=name, pretrained=pretrained, **kwargs)
        return torch.nn.Identity()

    monkeypatch.setattr(open_clip, "create_model", no_download)
    create_clip("ViT-L-14", "openai")
    assert seen["pretrained"] == "openai" and seen["force_quick_gelu"] is True
    create_clip("ViT-L-14", "laion2b_s32b_b82k")
    assert seen["force_quick_gelu"] is False


def test_the_quick_gelu_choice_is_recorded_and_rebuilt(tmp_path, dataset):
    run = fit(tiny_config(dataset, tmp_path / "run", method="probe", quick_gelu=True), progress=False)
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["quick_gelu"] is True
    activations = {type(m).__name__ for m in RunFolder(run).load().model.modules()}
    assert "QuickGELU" in activations and "GELU" not in activations
    plain = create_clip("dgs-tiny-vit", "none")
    assert "QuickGELU" not in {type(m).__name__ for m in plain.modules()}


class ToyMethod(ProbeMethod):
    """A fifth method, known only to the registry: a probe under another name."""

    name = "toy"
    summary = "a probe under another name"


def test_a_registered_method_trains_and_exports_without_touching_the_loop(tmp_path, dataset, monkeypatch):
    from dgs_export.run_export import ExportConfig, export_run

    monkeypatch.setitem(METHODS, "toy", ToyMethod)
    run = fit(tiny_config(dataset, tmp_path / "toy", method="toy"), progress=False)
    assert RunFolder(run).read_config().method == "toy"
    package = export_run(ExportConfig(run=str(run), out=str(tmp_path / "toy.dgs")))
    from dgs_sdk import ModelPackage

    architecture = ModelPackage.load(package).manifest.architecture
    assert architecture["method"] == "toy" and architecture["head"] == "linear"


def test_option_flags_are_one_per_key_and_documented():
    flags = option_flags()
    assert len({f.flag for f in flags}) == len(flags)
    by_flag = {f.flag: f for f in flags}
    assert set(by_flag["--lora-rank"].methods) == {"dgs", "lora"}
    assert by_flag["--prompt-depth"].methods == ("mirage",)
    assert dict(by_flag["--epochs"].defaults) == {"dgs": 1, "mirage": 5, "lora": 1, "probe": 3, "distill": 5}
    assert by_flag["--kd-temperature"].methods == ("distill",) and by_flag["--teacher-cache"].kind is bool
    assert all(f.help for f in flags), [f.flag for f in flags if not f.help]


def test_every_user_facing_error_is_a_dgs_error(tmp_path):
    from dgs_export.onnx_export import ExportError, ParityError
    from dgs_sdk.data import DataLayoutError
    from dgs_trainer.captions import CaptionError
    from dgs_trainer.errors import RunFolderError

    for error in (TrainError, ConfigError, RunFolderError, DataLayoutError, CaptionError, ExportError, ParityError):
        assert issubclass(error, DgsError), error
    result = invoke("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "run", "--arch", "dgs-tiny-vit",
                    "--pretrained", "none", "--method", "probe")
    assert result.exit_code == 2 and result.output.startswith("Error: ") and "data root not found" in result.output


def test_dgs_needs_captions_and_never_hands_the_label_to_the_text_branch(tmp_path, dataset):
    with pytest.raises(TrainError, match="dgs caption DATA --out captions.json"):
        fit(tiny_config(dataset, tmp_path / "none", captions=None), progress=False)
    assert not (tmp_path / "none" / "config.json").exists()
    assert DGSConfig().captions is None
    some = tmp_path / "some.json"
    some.write_text(json.dumps({"blocky/0_real/0.png": "a portrait", "blocky/1_fake/0.png": "a portrait"}))
    from dgs_sdk.data import load_samples
    from dgs_trainer.captions import MISSING_CAPTION, load_captions

    captions = load_captions(load_samples(dataset), dataset, some)
    assert captions.count("a portrait") == 2 and set(captions) == {"a portrait", MISSING_CAPTION}
    assert not any(word in c for c in captions for word in ("real", "fake"))


def test_eval_tta_averages_logits_over_seeded_mosaic_orders(tmp_path, dataset):
    from dgs_sdk.data import load_samples
    from dgs_sdk.detector import sigmoid
    from dgs_trainer.dataset import ImageDataset
    from dgs_trainer.eval_run import EvalConfig, evaluate_run

    run = fit(tiny_config(dataset, tmp_path / "run", method="probe"), progress=False)
    plain = evaluate_run(EvalConfig(run=str(run), data=str(dataset), workers=0, device="cpu"), progress=False)
    tta = evaluate_run(EvalConfig(run=str(run), data=str(dataset), workers=0, device="cpu", tta=3), progress=False)
    loaded = RunFolder(run).load()
    samples = load_samples(dataset)
    logits = np.zeros(len(samples))
    with torch.no_grad():
        for order in range(3):
            data = ImageDataset(samples, loaded.spec, order_seed=order)
            logits += np.array([loaded.model(data[i]["image"][None]).item() for i in range(len(samples))]) / 3
    expected = sigmoid(logits)
    got = np.array([tta["probabilities"][s.path] for s in samples])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    deterministic = np.array([plain["probabilities"][s.path] for s in samples])
    assert np.abs(got - deterministic).max() > 1e-4  # the orders matter to the model
    again = evaluate_run(EvalConfig(run=str(run), data=str(dataset), workers=0, device="cpu", tta=3), progress=False)
    assert again["probabilities"] == tta["probabilities"]  # seeded: the same every time


def test_eval_tta_needs_patch_select(tmp_path, dataset):
    run = fit(tiny_config(dataset, tmp_path / "run", method="probe", preprocess="clip"), progress=False)
    result = invoke("eval", run, "--data", dataset, "--tta", "2", "--workers", "0")
    assert result.exit_code == 2 and "test-time mosaic orders need patch-select" in result.output
