"""Damaged runs, bad inputs and resumed logs: clear errors (exit 2, the file named), never a traceback or a bad
package, on real runs of the tiny random CLIP."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from conftest import tiny_config, write_image  # noqa: E402
from dgs_export.run_export import ExportConfig, export_run  # noqa: E402
from dgs_sdk import ModelPackage  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_sdk.data import read_manifest  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402

# DGS-Net (probe stage, then surgery) on 24 images in batches of 4: steps 1-6 and 7-12, a checkpoint every 4 steps,
# validation after each epoch. The random backbone is kept in the run (--pretrained none).
RUN_SETTINGS = dict(method="dgs", save_every=4, tensorboard=True)
CUT_AT_STEP = 11  # the interrupted run's last checkpoint is at step 8, in the middle of the surgery epoch


def _config(dataset, out):
    return tiny_config(dataset, out, val=str(dataset), **RUN_SETTINGS)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, dataset):
    return fit(_config(dataset, tmp_path_factory.mktemp("runs") / "finished run"), progress=False)


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory, dataset):
    """The same run, killed during optimizer step 11 (as a KeyboardInterrupt would)."""
    config = _config(dataset, tmp_path_factory.mktemp("runs") / "cut run")
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == CUT_AT_STEP:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", failing_step)
        with pytest.raises(KeyboardInterrupt):
            fit(config, progress=False)
    return config.out


@pytest.fixture(scope="module")
def good_package(tmp_path_factory, finished):
    return export_run(ExportConfig(run=str(finished), out=str(tmp_path_factory.mktemp("packages") / "good.dgs")))


def copy_run(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run ñ copy")


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def eval_args(run, data):
    return ["eval", run, "--data", data, "--device", "cpu", "--workers", "0"]


def train_args(data, out):
    return ["train", "--method", "probe", "--arch", "dgs-tiny-vit", "--pretrained", "none", "--device", "cpu",
            "--workers", "0", "--batch-size", "4", "--epochs", "1", "--no-progress", "--data", data, "--out", out]


# 1. --out of dgs export


def test_export_out_must_be_a_package_outside_the_runs_own_files(tmp_path, finished):
    run = copy_run(finished, tmp_path)
    config = (run / "config.json").read_bytes()
    over_config = invoke("export", run, "--out", run / "config.json")
    assert over_config.exit_code == 2, over_config.output
    assert f"--out {run / 'config.json'}: a model package's name must end in .dgs" in over_config.output
    assert (run / "config.json").read_bytes() == config

    for inside in (run / "checkpoints" / "model.dgs", run / "tensorboard" / "x.DGS"):
        before = sorted(inside.parent.iterdir())
        refused = invoke("export", run, "--out", inside)
        assert refused.exit_code == 2, refused.output
        assert f"--out {inside}: {inside.parent.name} belongs to the run" in refused.output
        assert sorted(inside.parent.iterdir()) == before
    with pytest.raises(ValueError, match="belongs to the run"):
        export_run(ExportConfig(run=str(run), out=str(run / "checkpoints" / "last.safetensors.dgs")))

    metrics = (run / "metrics.jsonl").read_bytes()
    over_metrics = invoke("eval", run, "--data", run, "--json", run / "metrics.jsonl")  # the same rule for eval
    assert over_metrics.exit_code == 2, over_metrics.output
    assert f"--json {run / 'metrics.jsonl'}: metrics.jsonl belongs to the run" in over_metrics.output
    assert (run / "metrics.jsonl").read_bytes() == metrics

    beside = invoke("export", run, "--out", run / "Model.DGS")  # another name in the run folder is fine
    assert beside.exit_code == 0, beside.output
    assert ModelPackage.load(run / "Model.DGS").manifest.architecture["arch"] == "dgs-tiny-vit"


# 2. calibration.json


@pytest.mark.parametrize(
    "calibration",
    ['{"threshold": 1.5}', '{"threshold": NaN}', '{"threshold": "0.9"}', '{"threshold": true}', '{"balanced": 1}',
     "[0.5]", "{threshold: 0.5", "", '{"threshold": 1' + "0" * 400 + "}", "[" * 100_000 + "]" * 100_000],
)
def test_a_bad_calibrated_threshold_is_refused_and_the_package_kept(tmp_path, finished, good_package, dataset,
                                                                     calibration):
    run = copy_run(finished, tmp_path)
    (run / "calibration.json").write_text(calibration)
    out = shutil.copy(good_package, tmp_path / "model.dgs")
    before = out.read_bytes()
    exported = invoke("export", run, "--out", out)
    assert exported.exit_code == 2, exported.output
    assert f"{run / 'calibration.json'}:" in exported.output
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dgs", "run ñ copy"]  # no temporary file left
    evaluated = invoke(*eval_args(run, dataset))
    assert evaluated.exit_code == 2, evaluated.output
    assert f"{run / 'calibration.json'}:" in evaluated.output


def test_a_valid_calibrated_threshold_still_goes_into_the_package(tmp_path, finished):
    run = copy_run(finished, tmp_path)
    (run / "calibration.json").write_text('{"threshold": 1}')  # an int, at the edge of the range
    manifest = ModelPackage.load(export_run(ExportConfig(run=str(run), out=str(tmp_path / "m.dgs")))).manifest
    assert manifest.threshold == 1.0 and manifest.threshold_source == "calibrated"


# 3. data with no usable image


def garbage_images(root, label, count=4):
    for i in range(count):
        path = root / label / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("this is not a PNG")


def test_training_without_a_usable_image_of_a_class_fails(tmp_path, photos):
    nothing = tmp_path / "nothing readable"
    garbage_images(nothing, "real")
    garbage_images(nothing, "fake")
    result = invoke(*train_args(nothing, tmp_path / "r1"))
    assert result.exit_code == 2, result.output
    assert f"{nothing}: no image could be read in probe epoch 1" in result.output
    assert "0 real and 0 fake used, 4 real and 4 fake unreadable" in result.output
    assert not (tmp_path / "r1" / "model.safetensors").exists()

    no_fake = tmp_path / "no fake readable"
    for i, photo in enumerate(list(photos.values())[:4]):
        write_image(no_fake / "real" / f"{i}.png", np.ascontiguousarray(photo[:96, :96]))
    garbage_images(no_fake, "fake")
    result = invoke(*train_args(no_fake, tmp_path / "r2"))
    assert result.exit_code == 2, result.output
    assert f"{no_fake}: no fake image could be read in probe epoch 1" in result.output
    assert not (tmp_path / "r2" / "model.safetensors").exists()


def test_a_manifest_whose_files_are_all_missing_is_refused(tmp_path):
    manifest = tmp_path / "listed.csv"
    manifest.write_text("path,label\nreal/a.png,0\nreal/b.png,0\nfake/c.png,1\nfake/d.png,1\n")
    result = invoke(*train_args(manifest, tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert f"{manifest}: none of the 4 files it lists exists" in result.output
    assert not (tmp_path / "run").exists()


def test_evaluation_on_unreadable_data_fails(tmp_path, finished):
    data = tmp_path / "unreadable"
    garbage_images(data, "0_real")
    garbage_images(data, "1_fake")
    result = invoke(*eval_args(finished, data))
    assert result.exit_code == 2, result.output
    assert f"{data}: none of its 8 images could be read" in result.output


# 4. CSV manifests saved with a byte order mark


def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path, photos, caplog):
    image = np.ascontiguousarray(photos["astronaut"][:64, :64])
    write_image(tmp_path / "a.png", image)
    write_image(tmp_path / "b.png", image)
    manifest = tmp_path / "excel.csv"
    manifest.write_text("path,label,generator\na.png,real,sd\nb.png,fake,sd\ngone.png,1,sd\n", encoding="utf-8-sig")
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbfpath")
    samples = read_manifest(manifest)
    assert [(s.path, s.label, s.generator) for s in samples] == [
        (str(tmp_path / "a.png"), 0, "sd"), (str(tmp_path / "b.png"), 1, "sd"), (str(tmp_path / "gone.png"), 1, "sd")
    ]
    assert "1 of the 3 files it lists do not exist" in caplog.text


# 5. damaged runs


def _replace_tensor(path, pick):
    """Rewrite a safetensors file with the first tensor ``pick`` accepts given a wrong shape (metadata kept)."""
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = next(k for k in sorted(tensors) if pick(k))
    tensors[key] = torch.zeros(3, 5)
    save_file(tensors, str(path), metadata=metadata)


def _edit_config(path, edit):
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "config not json": ("config.json", lambda p: p.write_text('{"config": {')),
    "config not an object": ("config.json", lambda p: p.write_text("[1, 2]")),
    "config lacks config": ("config.json", lambda p: _edit_config(p, lambda r: r.pop("config"))),
    "config unknown key": ("config.json", lambda p: _edit_config(p, lambda r: r["config"].update(colour="red"))),
    "config wrong type": ("config.json", lambda p: _edit_config(p, lambda r: r["config"].update(batch_size="32"))),
    "config bad value": ("config.json", lambda p: _edit_config(p, lambda r: r["config"].update(batch_size=0))),
    "model garbage": ("model.safetensors", lambda p: p.write_text("not tensors")),
    "model truncated": ("model.safetensors", _truncate),
    "model wrong shape": ("model.safetensors", lambda p: _replace_tensor(p, lambda k: True)),
    "backbone truncated": ("backbone.safetensors", _truncate),
    "backbone wrong shape": ("backbone.safetensors", lambda p: _replace_tensor(p, lambda k: "weight" in k)),
    "probe garbage": ("probe.safetensors", lambda p: p.write_bytes(b"\x08" + b"\x00" * 7 + b"{}")),
    "probe wrong shape": ("probe.safetensors", lambda p: _replace_tensor(p, lambda k: True)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_run_is_named_by_eval_and_export(tmp_path, finished, dataset, damage):
    run = copy_run(finished, tmp_path)
    name, spoil = DAMAGES[damage]
    spoil(run / name)
    evaluated = invoke(*eval_args(run, dataset))
    assert evaluated.exit_code == 2, evaluated.output
    assert f"Error: {run / name}: " in evaluated.output
    exported = invoke("export", run, "--out", tmp_path / "model.dgs")
    assert exported.exit_code == 2, exported.output
    assert f"Error: {run / name}: " in exported.output
    assert not (tmp_path / "model.dgs").exists()


def _fifo(path):
    path.unlink()
    os.mkfifo(path)  # reading it would wait for a writer forever


def _edit_position(path, edit):
    """Rewrite a checkpoint's position metadata: ``edit`` changes the object, or returns raw text to store."""
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    position = json.loads(metadata["position"])
    text = edit(position) or json.dumps(position)
    save_file(tensors, str(path), metadata={**metadata, "position": text})


DAMAGES.update({
    "config nested too deeply": ("config.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
    "config a FIFO": ("config.json", _fifo),
    "config huge number": ("config.json", lambda p: _edit_config(p, lambda r: r["config"].update(lr=10**400))),
    "config 5000 digits": ("config.json", lambda p: p.write_text('{"config": {"lr": 1' + "0" * 5000 + "}}")),
    "calibration a FIFO": ("calibration.json", lambda p: p.write_text("{}") or _fifo(p)),
    "model a FIFO": ("model.safetensors", _fifo),
})

RESUME_DAMAGES = {
    "checkpoint position nested": ("checkpoints/last.safetensors",
                                   lambda p: _edit_position(p, lambda q: "[" * 100_000 + "]" * 100_000)),
    "checkpoint position past the run": ("checkpoints/last.safetensors",
                                         lambda p: _edit_position(p, lambda q: q.update(epoch=10**30))),
    "checkpoint batch past the data": ("checkpoints/last.safetensors",
                                       lambda p: _edit_position(p, lambda q: q.update(batch=10_000))),
    "metrics a FIFO": ("metrics.jsonl", _fifo),
    "config not json": ("config.json", lambda p: p.write_text("{")),
    "config wrong type": ("config.json", lambda p: _edit_config(p, lambda r: r["config"].update(epochs=[2]))),
    "checkpoint garbage": ("checkpoints/last.safetensors", lambda p: p.write_text("garbage")),
    "checkpoint truncated": ("checkpoints/last.safetensors", _truncate),
    "checkpoint trained tensor shape": (
        "checkpoints/last.safetensors", lambda p: _replace_tensor(p, lambda k: not k.startswith(("optimizer.", "rng.")))
    ),
    "checkpoint optimizer tensor shape": (
        "checkpoints/last.safetensors", lambda p: _replace_tensor(p, lambda k: k.endswith(".exp_avg"))
    ),
    "checkpoint without position": ("checkpoints/last.safetensors", lambda p: save_file({"x": torch.zeros(1)}, str(p))),
    "backbone garbage": ("backbone.safetensors", lambda p: p.write_text("garbage")),
    "probe wrong shape": ("probe.safetensors", lambda p: _replace_tensor(p, lambda k: True)),
}


@pytest.mark.parametrize("damage", list(RESUME_DAMAGES))
def test_a_damaged_run_is_named_by_resume(tmp_path, unfinished, damage):
    run = copy_run(unfinished, tmp_path)
    name, spoil = RESUME_DAMAGES[damage]
    spoil(run / name)
    resumed = invoke("train", "--resume", run, "--no-progress")
    assert resumed.exit_code == 2, resumed.output
    assert f"Error: {run / name}: " in resumed.output
    assert not (run / "model.safetensors").exists()


# 6. metrics of a resumed run


def test_a_resumed_run_logs_each_step_once(tmp_path, finished, unfinished):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def logged(run):
        return [(r["kind"], r.get("step")) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    run = copy_run(unfinished, tmp_path)
    cut = logged(run)
    assert cut.count(("train", 9)) == 1 and ("train", CUT_AT_STEP) not in cut  # steps 9-10 come after step 8's save
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "stage": "dgs", "ste')  # the kill cut the last line short
    resumed = invoke("train", "--resume", run, "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    steps = [step for kind, step in logged(run) if kind == "train"]
    assert steps == list(range(1, 13))
    assert logged(run) == logged(finished) == [*(("train", s) for s in range(1, 7)), ("val", 6),
                                               *(("train", s) for s in range(7, 13)), ("val", 12)]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
