"""Training runs on CPU with the tiny model: run folder, methods, resumption, evaluation and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from conftest import tiny_config, write_image  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_trainer.eval_run import EvalConfig, evaluate_run  # noqa: E402
from dgs_trainer.run_folder import RunFolder  # noqa: E402
from dgs_trainer.train import TrainError, fit  # noqa: E402


@pytest.mark.parametrize("method", ["probe", "lora", "dgs"])
def test_each_method_trains_into_a_run_folder(tmp_path, dataset, method):
    run = fit(tiny_config(dataset, tmp_path / "run", method=method), progress=False)
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["method"] == method and record["preprocess"]["transform"] == "patch-select"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if line["kind"] == "train"]
    assert len(steps) == (2 if method == "dgs" else 1) * 6  # 24 images / batch 4 per stage
    assert all(np.isfinite(line["loss"]) for line in steps)
    if method == "dgs":
        assert {"img", "text", "help"} <= set(steps[-1]) and (run / "probe.safetensors").exists()
    state = load_file(str(run / "model.safetensors"))
    assert state and all(("lora_" in k) or k.split(".")[0] in {"head", "img_fc", "text_fc", "probe_fc"} for k in state)
    model = RunFolder(run).load().model
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2,)


@pytest.mark.parametrize(
    "save_every, fail_at, val",
    [
        (1, 11, False),  # mid-epoch, in the first surgery epoch (steps 7-12)
        (0, 8, False),  # only end-of-epoch checkpoints: resumes at the start of the surgery stage
        (0, 14, True),  # with validation after each epoch; resumes at the start of the second surgery epoch
    ],
)
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, dataset, monkeypatch, save_every, fail_at, val):
    extra = {"val": str(dataset)} if val else {}
    config = tiny_config(dataset, tmp_path / "whole", method="dgs", save_every=save_every, epochs=2, **extra)
    whole = load_file(str(fit(config, progress=False) / "model.safetensors"))

    interrupted = tiny_config(dataset, tmp_path / "cut", method="dgs", save_every=save_every, epochs=2, **extra)
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    with pytest.raises(TrainError, match="already holds a run"):
        fit(interrupted, progress=False)
    resumed = load_file(str(fit(interrupted, resume=True, progress=False) / "model.safetensors"))
    assert set(resumed) == set(whole)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_evaluation_reports_per_generator_and_calibrates(tmp_path, dataset):
    run = fit(tiny_config(dataset, tmp_path / "run", method="probe", epochs=3), progress=False)
    report = evaluate_run(EvalConfig(run=str(run), data=str(dataset), device="cpu", workers=0), progress=False)
    metrics = report["metrics"]
    assert set(metrics) == {"blocky", "smooth", "mean"} and metrics["blocky"]["count"] == 12
    for key in ("acc", "real_acc", "fake_acc", "ap", "auc"):
        assert 0.0 <= metrics["mean"][key] <= 1.0
    assert report["threshold_source"] == "default" and report["threshold"] == 0.5
    assert len(report["probabilities"]) == 24
    calibrated = evaluate_run(EvalConfig(run=str(run), data=str(dataset), device="cpu", workers=0, calibrate=True),
                              progress=False)
    assert calibrated["threshold_source"] == "calibrated"
    assert calibrated["threshold"] == pytest.approx(calibrated["oracle_threshold"])
    assert json.loads((run / "calibration.json").read_text())["threshold"] == calibrated["threshold"]


def test_cli_train_and_eval(tmp_path, dataset):
    runner = CliRunner()
    run = tmp_path / "cli run"
    result = runner.invoke(main, ["train", "--method", "probe", "--arch", "dgs-tiny-vit", "--pretrained", "none",
                                  "--data", str(dataset), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                                  "--workers", "0", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "metrics.json"
    result = runner.invoke(main, ["eval", str(run), "--data", str(dataset), "--json", str(out), "--workers", "0",
                                  "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "blocky" in result.output and "mean" in result.output and "oracle threshold" in result.output
    assert json.loads(out.read_text())["metrics"]["mean"]["count"] == 24
    help_text = runner.invoke(main, ["train", "--help"]).output
    for flag in ("--lora-rank", "--lora-dropout", "--help-weight", "--probe-epochs", "--captions", "--resume"):
        assert flag in help_text


def test_bad_training_input_gives_clear_errors(tmp_path, dataset):
    runner = CliRunner()
    base = ["train", "--arch", "dgs-tiny-vit", "--pretrained", "none", "--device", "cpu", "--workers", "0"]
    missing = runner.invoke(main, [*base, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r1")])
    assert missing.exit_code == 2 and "data root not found" in missing.output
    arch = runner.invoke(main, ["train", "--arch", "ViT-Nope", "--data", str(dataset), "--out", str(tmp_path / "r2")])
    assert arch.exit_code == 2 and "architecture 'ViT-Nope' is unknown" in arch.output
    only_real = tmp_path / "only real"
    write_image(only_real / "0_real" / "a.png", np.zeros((64, 64, 3), np.uint8))
    empty = runner.invoke(main, [*base, "--data", str(only_real), "--out", str(tmp_path / "r3")])
    assert empty.exit_code == 2 and "no fake images found" in empty.output
    device = runner.invoke(main, [*base[:-4], "--device", "tpu", "--data", str(dataset), "--out", str(tmp_path / "r4")])
    assert device.exit_code == 2 and "device 'tpu' is not understood" in device.output
    blocks = runner.invoke(main, [*base, "--lora-blocks", "1,a", "--data", str(dataset), "--out", str(tmp_path / "r5")])
    assert blocks.exit_code == 2 and "--lora-blocks must be" in blocks.output and not (tmp_path / "r5").exists()
    out_of_range = runner.invoke(
        main, [*base, "--lora-blocks", "9", "--data", str(dataset), "--out", str(tmp_path / "r6")]
    )
    assert out_of_range.exit_code == 2 and "block 9 does not exist" in out_of_range.output
    outputs = missing.output + arch.output + empty.output + device.output + blocks.output + out_of_range.output
    assert "Traceback" not in outputs


def test_tensorboard_log_is_written_when_asked(tmp_path, dataset):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = fit(tiny_config(dataset, tmp_path / "tb", method="probe", tensorboard=True), progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 6


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path, dataset):
    """Two accumulated batches of 2 take the same optimizer steps as batches of 4 (probe: no dropout)."""
    big = fit(tiny_config(dataset, tmp_path / "big", method="probe", batch_size=4), progress=False)
    accumulated = fit(tiny_config(dataset, tmp_path / "acc", method="probe", batch_size=2, accumulate=2),
                      progress=False)
    a, b = load_file(str(big / "model.safetensors")), load_file(str(accumulated / "model.safetensors"))
    steps = [json.loads(line) for line in (accumulated / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 6
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
