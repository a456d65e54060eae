"""DGS-Net and MiraGe at the size users train: ViT-B-16 (random weights, 12 heads, fused attention), one training
step each on CPU into a real run folder, exported, and scored by the SDK as torch scores it."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from conftest import write_image  # noqa: E402
from dgs_sdk import Detector, ModelPackage  # noqa: E402
from dgs_sdk.detector import sigmoid  # noqa: E402
from dgs_sdk.image import load_image  # noqa: E402
from dgs_sdk.preprocess import preprocess_batch  # noqa: E402
from dgs_trainer.flags import config_from_flags  # noqa: E402
from dgs_trainer.run_folder import RunFolder  # noqa: E402
from dgs_trainer.train import fit  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_images(tmp_path_factory, photos):
    """One real photo crop and one blurred copy labelled fake (sizes around 224, one under it), with captions."""
    import cv2

    root = tmp_path_factory.mktemp("b16") / "data"
    photo = photos["chelsea"]
    real = np.ascontiguousarray(photo[:240, :260])
    fake = cv2.GaussianBlur(np.ascontiguousarray(photo[40:200, 60:260]), (5, 5), 0)  # 160 x 200: under 224
    paths = [write_image(root / "0_real" / "a.png", real), write_image(root / "1_fake" / "b.png", fake)]
    (root / "captions.json").write_text(json.dumps({"0_real/a.png": "a tabby cat", "1_fake/b.png": "a tabby cat"}))
    return root, paths


@pytest.mark.parametrize("method, flags", [
    ("dgs", {"probe_epochs": 1, "epochs": 1}),
    ("mirage", {"epochs": 1, "warmup_epochs": 0}),
])
def test_vit_b16_trains_one_step_exports_and_scores_like_torch(tmp_path, two_images, method, flags):
    from dgs_export.run_export import ExportConfig, export_run

    root, paths = two_images
    extra = {"captions": str(root / "captions.json")} if method == "dgs" else {}
    config = config_from_flags(dict(data=str(root), out=str(tmp_path / "run"), method=method, arch="ViT-B-16",
                                    pretrained="none", batch_size=2, workers=0, device="cpu", **flags, **extra))
    run = fit(config, progress=False)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == (2 if method == "dgs" else 1) and all(np.isfinite(s["loss"]) for s in steps)

    package = export_run(ExportConfig(run=str(run), out=str(tmp_path / f"{method}.dgs")))
    manifest = ModelPackage.load(package).manifest
    assert manifest.architecture["arch"] == "ViT-B-16" and manifest.architecture["method"] == method
    loaded = RunFolder(run).load()
    batch = preprocess_batch([load_image(p) for p in paths], loaded.spec)
    with torch.no_grad():
        expected = sigmoid(loaded.model(torch.from_numpy(batch)).numpy())
    results = Detector(package).predict([str(p) for p in paths])
    actual = np.array([r.probability for r in results])
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
    if method == "dgs":  # the published recipe's input: patch-select, padded for the image under 224 pixels
        assert loaded.spec.transform == "patch-select" and loaded.spec.small_images == "pad"


@pytest.mark.parametrize("student", ["ViT-B-32", "MobileCLIP2-S0"])
def test_vit_b16_teacher_distils_into_a_real_student_that_exports_and_scores_like_torch(tmp_path, two_images,
                                                                                          student, monkeypatch):
    """A ViT-B-16 probe run taught to a student of another width (768 -> 512, with feature matching) at the
    teacher's input size: ViT-B-32, and MobileCLIP2-S0 (a timm tower made at 256 px, built at 224)."""
    from dgs_export.run_export import ExportConfig, export_run

    monkeypatch.setenv("DGS_CACHE_DIR", str(tmp_path / "cache"))
    root, paths = two_images
    teacher = fit(config_from_flags(dict(data=str(root), out=str(tmp_path / "teacher"), method="probe",
                                         arch="ViT-B-16", pretrained="none", batch_size=2, workers=0, device="cpu",
                                         epochs=1)), progress=False)
    spec = RunFolder(teacher).read_preprocess()
    run = fit(config_from_flags(dict(
        data=str(root), out=str(tmp_path / "student"), method="distill", teacher=str(teacher), arch=student,
        pretrained="none", preprocess=spec.transform, small_images=spec.small_images, image_size=spec.size,
        batch_size=2, workers=0, device="cpu", epochs=1, kd_feature_weight=0.5)), progress=False)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 1 and np.isfinite(steps[0]["loss"]) and steps[0]["feature"] > 0

    loaded = RunFolder(run).load()
    assert loaded.spec == spec and loaded.model.feature_proj is None
    package = export_run(ExportConfig(run=str(run), out=str(tmp_path / "student.dgs")))
    manifest = ModelPackage.load(package).manifest
    assert manifest.architecture["arch"] == student and manifest.preprocess == spec
    assert manifest.provenance["teacher"]["kind"] == "run"
    batch = preprocess_batch([load_image(p) for p in paths], spec)
    with torch.no_grad():
        expected = sigmoid(loaded.model(torch.from_numpy(batch)).numpy())
    actual = np.array([r.probability for r in Detector(package).predict([str(p) for p in paths])])
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
