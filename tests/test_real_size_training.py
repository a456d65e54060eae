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
