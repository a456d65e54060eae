"""`dgs distill`: a tiny trained run (or its package) taught to a smaller student, on real runs, files, caches and
ONNX Runtime sessions.

The teacher is a linear probe on `dgs-tiny-vit` trained at 64 px (patch-select), so the students are built at
64 px too and every distillation takes a few seconds: 24 images in batches of 4, one epoch, 6 optimizer steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from conftest import tiny_config  # noqa: E402
from dgs_export.run_export import ExportConfig, export_run  # noqa: E402
from dgs_sdk import Detector, ModelPackage  # noqa: E402
from dgs_sdk.cli import main  # noqa: E402
from dgs_sdk.data import load_samples  # noqa: E402
from dgs_sdk.preprocess import PreprocessSpec  # noqa: E402
from dgs_trainer.dataset import ImageDataset  # noqa: E402
from dgs_trainer.errors import TrainError  # noqa: E402
from dgs_trainer.methods.distill import DistillLoss, DistillMethod, distillation_loss  # noqa: E402
from dgs_trainer.models import create_clip, image_embedding_width  # noqa: E402
from dgs_trainer.run_folder import RunFolder  # noqa: E402
from dgs_trainer.teacher import PackageTeacher, RunTeacher  # noqa: E402
from dgs_trainer.teacher_cache import TeacherCache, cache_file, input_keys  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402

TEACHER_SIZE = 64
IMAGES, BATCHES = 24, 6  # the `dataset` fixture in batches of 4
SETTINGS = ("--pretrained", "none", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
            "--no-progress")
RUN_COMPUTE = "torch cpu float32"  # how a run teacher computes on the CPU (part of the cache key)


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def succeeded(result):
    """The result of a command that must have worked."""
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def distill(teacher, data, out, *extra, student="dgs-micro-vit"):
    return invoke("distill", teacher, "--student", student, "--data", data, "--out", out, *SETTINGS, *extra)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert set(first) == set(second)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)


def record(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def cache_files(folder: Path) -> list[Path]:
    return sorted((folder / "teacher-outputs").glob("*.sqlite"))


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM outputs").fetchone()[0]


@pytest.fixture
def teacher_calls(monkeypatch):
    """Counts the images each kind of teacher is asked to score (a list per call)."""
    calls = {"run": [], "package": []}
    for kind, cls in (("run", RunTeacher), ("package", PackageTeacher)):
        real = cls.outputs

        def counting(self, images, features, real=real, kind=kind):
            calls[kind].append(len(images))
            return real(self, images, features)

        monkeypatch.setattr(cls, "outputs", counting)
    return calls


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, dataset) -> Path:
    """A finished probe run on `dgs-tiny-vit` at 64 px, in a folder with a space and unicode in its name."""
    out = tmp_path_factory.mktemp("teachers") / "teacher run ñ"
    return fit(tiny_config(dataset, out, method="probe", image_size=TEACHER_SIZE), progress=False)


@pytest.fixture(scope="module")
def teacher_package(tmp_path_factory, teacher) -> Path:
    return export_run(ExportConfig(run=str(teacher), out=str(tmp_path_factory.mktemp("packages") / "teacher.dgs")))


@dataclass
class Student:
    run: Path
    cache: Path  # its DGS_CACHE_DIR, holding the teacher's outputs


@pytest.fixture(scope="module")
def student(tmp_path_factory, teacher, dataset) -> Student:
    """`dgs distill` of the teacher (given by a relative path) into `dgs-micro-vit`, caching in a folder of its own."""
    cache = tmp_path_factory.mktemp("student cache")
    out = tmp_path_factory.mktemp("students") / "student"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGS_CACHE_DIR", str(cache))
        patch.chdir(teacher.parent)
        succeeded(distill(teacher.name, dataset, out))
    return Student(out, cache)


# 1. a distilled run is a normal run


def test_a_distilled_student_is_a_run_that_eval_and_export_take(tmp_path, student, teacher, dataset):
    saved, teacher_record = record(student.run), record(teacher)
    config = saved["config"]
    assert config["method"] == "distill" and config["arch"] == "dgs-micro-vit"
    assert config["options"]["teacher"] == str(teacher) and os.path.isabs(config["options"]["teacher"])
    assert saved["preprocess"] == teacher_record["preprocess"] and config["image_size"] == TEACHER_SIZE
    described = saved["provenance"]["teacher"]
    checksum = RunTeacher(teacher).checksum
    assert described == {"path": str(teacher), "kind": "run", "checksum": checksum} and len(checksum) == 64
    spec = PreprocessSpec.from_dict(teacher_record["preprocess"])
    [kept] = cache_files(student.cache)
    assert kept.name == cache_file(checksum, spec, RUN_COMPUTE).name  # the checksum keys the cache
    assert {key.split(".")[0] for key in weights(student.run)} == {"tower", "head"}  # every student weight, no teacher

    report_file = tmp_path / "report.json"
    evaluated = invoke("eval", student.run, "--data", dataset, "--json", report_file, "--workers", "0", "--device",
                       "cpu")
    assert "blocky" in succeeded(evaluated).output
    report = json.loads(report_file.read_text())
    assert report["metrics"]["mean"]["count"] == IMAGES

    package = export_run(ExportConfig(run=str(student.run), out=str(tmp_path / "student.dgs")))
    manifest = ModelPackage.load(package).manifest
    assert manifest.architecture["arch"] == "dgs-micro-vit" and manifest.architecture["distilled"]
    assert manifest.provenance["method"] == "distill" and manifest.provenance["teacher"] == described
    assert manifest.preprocess.to_dict() == teacher_record["preprocess"]
    paths = sorted(report["probabilities"])
    results = Detector(package).predict(paths)
    for path, result in zip(paths, results, strict=True):
        assert result.ok, result.error
        assert result.probability == pytest.approx(report["probabilities"][path], abs=1e-4), path


# 2. a package as teacher


def test_a_package_teaches_through_the_sdk(tmp_path, monkeypatch, teacher_package, teacher, teacher_calls, dataset):
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "from package"
    succeeded(distill(teacher_package, dataset, out))
    assert teacher_calls == {"run": [], "package": [4] * BATCHES}
    saved = record(out)
    package = ModelPackage.load(teacher_package)
    assert saved["provenance"]["teacher"] == {"path": str(teacher_package), "kind": "package", "precision": "fp32",
                                              "checksum": package.variant_sha256("fp32")}
    assert saved["preprocess"] == package.manifest.preprocess.to_dict() == record(teacher)["preprocess"]
    assert len(cache_files(tmp_path / "cache")) == 1

    # The package, scored by ONNX Runtime, gives the run's own logits.
    samples = load_samples(dataset)
    images = torch.stack([ImageDataset(samples, package.manifest.preprocess)[i]["image"] for i in range(8)])
    from_package, _ = PackageTeacher(teacher_package).outputs(images, False)
    from_run, _ = RunTeacher(teacher).outputs(images, False)
    torch.testing.assert_close(from_package, from_run, rtol=0, atol=1e-4)

    student_package = export_run(ExportConfig(run=str(out), out=str(tmp_path / "student.dgs")))
    results = Detector(student_package).predict(sorted(str(p) for p in dataset.rglob("*.png")))
    assert len(results) == IMAGES and all(r.ok and 0 <= r.probability <= 1 for r in results)


# 3. the teacher's outputs cached on disk


def test_a_repeated_distillation_takes_every_teacher_output_from_the_cache(tmp_path, monkeypatch, student, teacher,
                                                                           teacher_calls, caplog, dataset):
    monkeypatch.setenv("DGS_CACHE_DIR", str(student.cache))
    caplog.set_level(logging.INFO, logger="dgs_trainer")
    succeeded(distill(teacher, dataset, tmp_path / "again"))
    assert teacher_calls["run"] == []
    assert f"teacher outputs: {IMAGES} of {IMAGES} from the cache" in caplog.text
    assert_same_weights(tmp_path / "again", student.run)  # cached logits are the teacher's to the bit


def test_dgs_cache_lists_and_clears_the_teacher_outputs(tmp_path, monkeypatch, student, teacher, dataset):
    cache = Path(shutil.copytree(student.cache, tmp_path / "cache"))  # the module's cache stays as it is
    monkeypatch.setenv("DGS_CACHE_DIR", str(cache))
    (kept,) = cache_files(cache)
    listed = succeeded(invoke("cache", "list"))
    assert f"teacher outputs of dgs distill in {cache / 'teacher-outputs'}: 1" in listed.output
    assert kept.name in listed.output
    cleared = succeeded(invoke("cache", "clear"))
    assert f"removed {kept}" in cleared.output and "1 teacher output file(s) removed" in cleared.output
    assert cache_files(cache) == []
    assert "teacher outputs of dgs distill in" in succeeded(invoke("cache", "list")).output.splitlines()[-1]
    assert succeeded(invoke("cache", "list")).output.rstrip().endswith(": none")


def test_no_teacher_cache_writes_nothing(tmp_path, monkeypatch, student, teacher, teacher_calls, dataset):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DGS_CACHE_DIR", str(cache))
    succeeded(distill(teacher, dataset, tmp_path / "uncached", "--no-teacher-cache"))
    assert teacher_calls["run"] == [4] * BATCHES
    assert not cache.exists()
    assert record(tmp_path / "uncached")["config"]["options"]["teacher_cache"] is False
    assert_same_weights(tmp_path / "uncached", student.run)


def test_another_teacher_gets_its_own_cache_file(tmp_path, monkeypatch, student, teacher, teacher_calls, dataset):
    other = Path(shutil.copytree(teacher, tmp_path / "other teacher"))
    state = weights(other)
    state["head.weight"] = state["head.weight"] * 2
    save_file(state, str(other / "model.safetensors"))
    cache = tmp_path / "cache"
    (cache / "teacher-outputs").mkdir(parents=True)
    [kept] = cache_files(student.cache)
    shutil.copy(kept, cache / "teacher-outputs" / kept.name)  # the first teacher's outputs, all there
    before = kept.read_bytes()
    monkeypatch.setenv("DGS_CACHE_DIR", str(cache))

    succeeded(distill(other, dataset, tmp_path / "from other"))
    assert teacher_calls["run"] == [4] * BATCHES  # nothing was taken from the first teacher's file
    checksum = record(tmp_path / "from other")["provenance"]["teacher"]["checksum"]
    assert checksum != record(student.run)["provenance"]["teacher"]["checksum"]
    spec = PreprocessSpec.from_dict(record(teacher)["preprocess"])
    new = cache_file(checksum, spec, RUN_COMPUTE)
    assert cache_files(cache) == sorted([cache / "teacher-outputs" / kept.name, new]) and rows(new) == IMAGES
    assert (cache / "teacher-outputs" / kept.name).read_bytes() == before

    # The preprocessing and the way a teacher computes are part of the key too.
    assert cache_file(checksum, PreprocessSpec.patch_select(size=96), RUN_COMPUTE) != new
    assert cache_file(checksum, spec, "torch cuda bfloat16") != new


def test_a_damaged_cache_file_is_set_aside(tmp_path, monkeypatch, student, teacher, teacher_calls, caplog,
                                           dataset):
    cache = tmp_path / "cache"
    [kept] = cache_files(student.cache)
    damaged = cache / "teacher-outputs" / kept.name
    damaged.parent.mkdir(parents=True)
    garbage = np.random.default_rng(0).bytes(8192)
    damaged.write_bytes(garbage)
    monkeypatch.setenv("DGS_CACHE_DIR", str(cache))
    caplog.set_level(logging.INFO, logger="dgs_trainer")

    succeeded(distill(teacher, dataset, tmp_path / "run"))
    assert "the teacher cache is damaged" in caplog.text and f"{kept.name}.damaged" in caplog.text
    assert damaged.with_name(kept.name + ".damaged").read_bytes() == garbage
    assert rows(damaged) == IMAGES and teacher_calls["run"] == [4] * BATCHES
    assert_same_weights(tmp_path / "run", student.run)


def test_a_cache_file_of_another_shape_is_set_aside_and_bad_rows_count_as_absent(tmp_path, caplog):
    """A SQLite file whose table has other columns is set aside like garbage; an embedding of the wrong width (a
    row edited by hand) is not returned but computed again."""
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE outputs (name TEXT, score REAL)")
    caplog.set_level(logging.WARNING, logger="dgs_trainer")
    cache = TeacherCache(foreign)
    assert "the teacher cache is damaged" in caplog.text and (tmp_path / "foreign.sqlite.damaged").exists()
    keys = [b"a" * 16, b"b" * 16]
    cache.store(keys, torch.tensor([1.0, -1.0]), torch.ones(2, 4))
    logits, embeddings = cache.lookup(keys, width=4)
    assert logits == [1.0, -1.0] and all(e.shape == (4,) for e in embeddings)
    assert cache.lookup(keys, width=None)[0] == [1.0, -1.0]
    logits, embeddings = cache.lookup(keys, width=8)
    assert logits == [None, None] and embeddings == [None, None]
    cache.close()


def test_cached_logits_are_the_teachers_own(student, teacher, dataset):
    """Every input of the student's epoch (same seed, augmentation and order) is in the cache with the logit the
    teacher run's network gives it."""
    spec = PreprocessSpec.from_dict(record(teacher)["preprocess"])
    data = ImageDataset(load_samples(dataset), spec, train=True, seed=0, hflip=True)
    data.set_epoch(0)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    [path] = cache_files(student.cache)
    cache = TeacherCache(path)
    try:
        logits, embeddings = cache.lookup(input_keys(images), width=None)
    finally:
        cache.close()
    assert cache.hits == IMAGES and None not in logits and embeddings == [None] * IMAGES
    with torch.no_grad():
        expected = RunFolder(teacher).load().model(images)
    torch.testing.assert_close(torch.tensor(logits, dtype=torch.float32), expected, rtol=0, atol=1e-5)


def test_init_from_teacher_starts_the_student_from_every_other_teacher_block(tmp_path, monkeypatch, teacher,
                                                                             dataset):
    """dgs-micro-vit (2 blocks) from dgs-tiny-vit (4): block 0 from block 0, block 1 from block 2, the rest as the
    teacher's. At a learning rate of 1e-12 the trained student still holds them; a student of another
    architecture is refused before anything is written."""
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "initialised"
    succeeded(distill(teacher, dataset, out, "--init-from-teacher", "--lr", "1e-12", "--head-lr", "1e-12"))
    source = RunFolder(teacher).load().model.inference_model().visual.state_dict()
    tower = {k.removeprefix("tower."): v for k, v in weights(out).items() if k.startswith("tower.")}
    assert any("resblocks.1." in k for k in tower)
    for key, value in tower.items():
        name = key.replace("resblocks.1.", "resblocks.2.")
        torch.testing.assert_close(value, source[name], rtol=0, atol=1e-6, msg=key)
    assert record(out)["config"]["options"]["init_from_teacher"] is True

    refused = distill(teacher, dataset, tmp_path / "refused", "--init-from-teacher", student="timm-convnext_atto")
    assert refused.exit_code == 2 and "Error: --init-from-teacher: the student has 0 transformer blocks" in \
        refused.output
    assert not (tmp_path / "refused" / "config.json").exists()


# 4. resumption


CUT_AT_STEP = 5  # with --save-every 2, the last checkpoint is at step 4: batch 5 is trained again on resume


def distill_cut(monkeypatch, teacher, data, out, *extra, student="dgs-micro-vit"):
    """`distill` with --save-every 2, interrupted (as by Ctrl-C) during optimizer step `CUT_AT_STEP`."""
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == CUT_AT_STEP:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", failing_step)
        interrupted = distill(teacher, data, out, "--save-every", "2", *extra, student=student)
    assert interrupted.exit_code == 130 and f"dgs distill --resume {out}" in interrupted.output
    assert not (out / "model.safetensors").exists()


def test_an_interrupted_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch, student, teacher,
                                                                 dataset):
    """Killed at optimizer step 5, then resumed: the weights of the uninterrupted student, to the bit. The teacher
    is a copy (same checksum); while it is gone, or once it has been retrained, --resume says so."""
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    copy = Path(shutil.copytree(teacher, tmp_path / "teacher copy"))
    out = tmp_path / "cut run"
    distill_cut(monkeypatch, copy, dataset, out)

    both = invoke("distill", teacher, "--resume", out)
    assert both.exit_code == 2 and "Error: --resume continues a distillation" in both.output

    moved = copy.rename(tmp_path / "moved teacher")
    gone = invoke("distill", "--resume", out, "--no-progress")
    assert gone.exit_code == 2 and f"Error: teacher {copy}: not found" in gone.output
    moved.rename(copy)

    weights = copy / "model.safetensors"
    original = weights.read_bytes()
    retrained = load_file(weights)
    retrained = {k: v + 1 for k, v in retrained.items()}
    save_file(retrained, weights)
    changed = invoke("distill", "--resume", out, "--no-progress")
    assert changed.exit_code == 2 and "its teacher is not the one it started with" in changed.output
    weights.write_bytes(original)

    succeeded(invoke("distill", "--resume", out, "--no-progress"))
    assert_same_weights(out, student.run)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, BATCHES + 1))


def test_a_resumed_feature_matching_distillation_ends_with_the_same_weights(tmp_path, monkeypatch, teacher,
                                                                            dataset):
    """The resumed run takes batch 5's teacher embeddings from the cache (computed before the cut), the
    uninterrupted one from the teacher: both must see the same values."""
    matching = ("--kd-feature-weight", "0.5")
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache of the whole run"))
    succeeded(distill(teacher, dataset, tmp_path / "whole", *matching))
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache of the cut run"))
    distill_cut(monkeypatch, teacher, dataset, tmp_path / "cut", *matching)
    succeeded(invoke("distill", "--resume", tmp_path / "cut", "--no-progress"))
    assert_same_weights(tmp_path / "cut", tmp_path / "whole")


# 5. feature matching


def test_feature_matching_trains_a_projection_that_is_not_exported(tmp_path, monkeypatch, teacher, dataset):
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}
    real_build, real_finished = DistillMethod.build, DistillMethod.stage_finished

    def build(self, stage, context):
        module = real_build(self, stage, context)
        if context.samples is not None:
            seen["initial"] = module.feature_proj.weight.detach().clone()
        return module

    def stage_finished(self, stage, module, context):
        seen["trained"] = module.feature_proj.weight.detach().clone()
        real_finished(self, stage, module, context)
        seen["after"] = module.feature_proj

    monkeypatch.setattr(DistillMethod, "build", build)
    monkeypatch.setattr(DistillMethod, "stage_finished", stage_finished)
    out = tmp_path / "matched"
    succeeded(distill(teacher, dataset, out, "--kd-feature-weight", "0.5", student="timm-convnext_atto"))

    assert seen["initial"].shape == (128, 320)  # student width 320 onto the teacher's 128
    assert not torch.equal(seen["initial"], seen["trained"]) and seen["after"] is None
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == BATCHES and all(0 <= s["feature"] <= 2 and math.isfinite(s["loss"]) for s in steps)
    assert {key.split(".")[0] for key in weights(out)} == {"tower", "head"}
    [path] = cache_files(tmp_path / "cache")
    with sqlite3.connect(path) as db:
        assert {len(blob) for (blob,) in db.execute("SELECT features FROM outputs")} == {128 * 2}  # float16

    import onnx

    package = export_run(ExportConfig(run=str(out), out=str(tmp_path / "matched.dgs")))
    graph = onnx.load_model_from_string(ModelPackage.load(package).model_bytes).graph
    shapes = [tuple(init.dims) for init in graph.initializer]
    assert (1, 320) in shapes or (320,) in shapes  # the linear head on the student's own width
    assert not {(128, 320), (320, 128)} & set(shapes)  # no projection onto the teacher's width
    results = Detector(package).predict(sorted(str(p) for p in dataset.rglob("*.png"))[:6])
    assert all(r.ok for r in results)


def test_feature_matching_with_a_package_teacher_is_refused(tmp_path, monkeypatch, teacher_package, dataset):
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    refused = distill(teacher_package, dataset, tmp_path / "run", "--kd-feature-weight", "0.5")
    assert refused.exit_code == 2, refused.output
    assert f"Error: teacher {teacher_package}: feature matching needs the image embedding" in refused.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


# 6. errors


@pytest.mark.parametrize("case, expected", [
    ("missing", "Error: teacher {teacher}: not found"),
    ("unfinished", "Error: teacher {teacher}: not a finished training run (model.safetensors is missing)"),
    ("garbage package", "Error: teacher {teacher}"),
    ("preprocess clip", "Error: --preprocess clip: the teacher {teacher} takes patch-select"),
    ("image size", "Error: --image-size 96: the teacher {teacher} takes 64"),
    ("no student", "Error: --student is required"),
    ("resume and teacher", "Error: --resume continues a distillation with its own teacher and student"),
    ("all weights zero", "at least one of hard_weight, soft_weight and feature_weight must be positive"),
    ("negative weight", "soft_weight must be a non-negative number, got -1.0"),
    ("temperature zero", "temperature must be positive, got 0.0"),
])
def test_bad_distillations_are_refused_clearly(tmp_path, monkeypatch, teacher, dataset, case, expected):
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    given, student, extra = teacher, "dgs-micro-vit", []
    if case == "missing":
        given = tmp_path / "no such run"
    elif case == "unfinished":
        given = Path(shutil.copytree(teacher, tmp_path / "unfinished run"))
        (given / "model.safetensors").unlink()
    elif case == "garbage package":
        given = tmp_path / "teacher ñ.dgs"
        given.write_bytes(b"\x00garbage, not a zip archive" * 50)
    elif case == "preprocess clip":
        extra = ["--preprocess", "clip"]
    elif case == "image size":
        extra = ["--image-size", "96"]
    elif case == "no student":
        student = None
    elif case == "resume and teacher":
        extra = ["--resume", tmp_path / "some run"]
    else:
        extra = {"all weights zero": ["--kd-hard-weight", "0", "--kd-soft-weight", "0"],
                 "negative weight": ["--kd-soft-weight", "-1"],
                 "temperature zero": ["--kd-temperature", "0"]}[case]
    args = ["distill", given, *(["--student", student] if student else []), "--data", dataset, "--out",
            tmp_path / "run", *SETTINGS, *extra]
    refused = invoke(*args)
    assert refused.exit_code == 2, refused.output
    assert expected.format(teacher=given) in refused.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_fit_refuses_a_student_fed_other_inputs_than_its_teacher(tmp_path, monkeypatch, teacher, dataset):
    """Python callers skip the CLI's checks; `fit` still refuses a run whose input is not the teacher's."""
    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    config = tiny_config(dataset, tmp_path / "run", method="distill", arch="dgs-micro-vit", teacher=str(teacher))
    with pytest.raises(TrainError, match="the teacher takes patch-select at 64 px, small images pad; this run would "
                                         "feed patch-select at 224 px"):
        fit(config, progress=False)
    assert not (tmp_path / "run").exists()


# 7. the loss


def test_the_soft_term_vanishes_when_the_student_matches_the_teacher():
    logits = torch.tensor([-3.0, -0.5, 0.0, 1.5, 4.0])
    labels = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    loss = DistillLoss(hard_weight=0.5, soft_weight=0.5, temperature=3.0)
    total, logs = distillation_loss(logits, logits, labels, loss)
    hard = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item()
    assert logs["soft"] == pytest.approx(0.0, abs=1e-6) and logs["hard"] == pytest.approx(hard)
    assert total.item() == pytest.approx(0.5 * hard, abs=1e-6) and logs["agreement"] == 1.0
    features = torch.randn(5, 8)
    _, logs = distillation_loss(logits, logits, labels, loss, features, features * 3)
    assert logs["feature"] == pytest.approx(0.0, abs=1e-6)  # cosine: the scale does not count


def test_the_soft_terms_gradient_moves_the_student_toward_the_teacher():
    teacher = torch.tensor([2.0, -3.0, 0.5, -0.2])
    student = torch.tensor([-1.0, 1.0, 0.5, 2.0], requires_grad=True)
    labels = torch.zeros(4)
    only_soft = DistillLoss(hard_weight=0.0, soft_weight=1.0, temperature=2.0)
    total, _ = distillation_loss(student, teacher, labels, only_soft)
    total.backward()
    assert torch.equal(torch.sign(-student.grad), torch.sign(teacher - student.detach()))
    optimizer = torch.optim.SGD([student], lr=8.0)
    gap = (student - teacher).abs().sum().item()
    for _ in range(50):
        optimizer.zero_grad()
        distillation_loss(student, teacher, labels, only_soft)[0].backward()
        optimizer.step()
    assert (student - teacher).abs().sum().item() < gap / 1000


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_the_soft_term_is_t_squared_times_the_kl_divergence(temperature):
    student = np.array([-2.0, 0.3, 1.0, 3.0])
    teacher = np.array([1.0, -1.5, 1.0, 0.2])

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    p, q = sigmoid(teacher / temperature), sigmoid(student / temperature)
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    expected = temperature**2 * kl.mean()
    loss = DistillLoss(hard_weight=0.0, soft_weight=1.0, temperature=temperature)
    total, logs = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.zeros(4), loss)
    assert logs["soft"] == pytest.approx(expected, rel=1e-5) and total.item() == pytest.approx(expected, rel=1e-5)


def test_the_loss_weights_are_checked():
    for bad, message in (({"hard_weight": 0, "soft_weight": 0}, "at least one"), ({"hard_weight": -0.1}, "hard_weight"),
                         ({"feature_weight": math.nan}, "feature_weight"), ({"temperature": 0}, "temperature"),
                         ({"temperature": math.inf}, "temperature")):
        with pytest.raises(ValueError, match=message):
            DistillLoss(**bad)
    assert DistillLoss(hard_weight=0, soft_weight=0, feature_weight=1).feature_weight == 1


# 8. student architectures


def test_a_timm_tower_gives_embeddings_of_its_width():
    clip = create_clip("timm-convnext_atto", "none")
    assert image_embedding_width(clip.visual) == 320
    with torch.no_grad():
        assert clip.visual(torch.zeros(2, 3, 224, 224)).shape == (2, 320)


def test_a_timm_backbone_checkpoint_loads_into_the_tower(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    backbone = timm.create_model("convnext_atto", pretrained=False)
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    path = tmp_path / "convnext atto ñ.safetensors"
    save_file(state, str(path))
    torch.manual_seed(2)
    trunk = create_clip("timm-convnext_atto", path).visual.trunk.state_dict()
    assert trunk and set(trunk) <= set(state) and "head.fc.weight" in set(state) - set(trunk)
    for key, value in trunk.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)

    garbage = tmp_path / "garbage ñ.safetensors"
    garbage.write_bytes(b"not a checkpoint at all" * 40)
    with pytest.raises(TrainError, match=f"{garbage}: cannot be loaded as timm-convnext_atto weights"):
        create_clip("timm-convnext_atto", garbage)


def test_image_size_builds_a_vit_at_another_size():
    clip = create_clip("dgs-micro-vit", "none", image_size=TEACHER_SIZE)
    assert tuple(clip.visual.image_size) == (TEACHER_SIZE, TEACHER_SIZE)
    assert clip.visual.positional_embedding.shape[0] == 1 + (TEACHER_SIZE // 32) ** 2
    with torch.no_grad():
        assert clip.visual(torch.zeros(3, 3, TEACHER_SIZE, TEACHER_SIZE)).shape == (3, 128)
    assert len(clip.visual.transformer.resblocks) == 2  # dgs-micro-vit: half dgs-tiny-vit's depth
