"""The package checks at the size users deploy: a ViT-B/16 detector (random weights, 12 heads, fused attention)
exported, loaded through every check, scored, and refused once one of its real weights is moved to external data."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from dgs_sdk import Detector, ModelPackage, ModelPackageError, PreprocessSpec  # noqa: E402
from dgs_sdk.package import MANIFEST_NAME  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit_b_package(tmp_path_factory, photos):
    from dgs_export import export_package
    from dgs_trainer import build_image_detector

    torch.manual_seed(0)
    model = build_image_detector("ViT-B-16", pretrained="none").eval()
    out = tmp_path_factory.mktemp("vit-b") / "vit-b-16.dgs"
    return export_package(model, out, PreprocessSpec.clip(), list(photos.values())[:2],
                          architecture={"arch": "ViT-B-16", "head": "linear"})


def test_a_vit_b_package_passes_every_check_and_scores(vit_b_package, photos):
    package = ModelPackage.load(vit_b_package)
    assert package.manifest.files["model.onnx"]["size"] > 300_000_000  # 86M float32 parameters
    assert package.fixed_batch is None
    results = Detector(package, batch_size=3).predict(list(photos.values()))
    assert all(r.ok for r in results) and len({round(r.probability, 6) for r in results}) > 1


def test_a_vit_b_graph_with_one_weight_moved_to_external_data_is_refused(vit_b_package, tmp_path):
    with zipfile.ZipFile(vit_b_package) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
        model = onnx.load_model_from_string(zf.read("model.onnx"))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))  # the largest real weight matrix
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    data = model.SerializeToString()
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    hostile = tmp_path / "hostile.dgs"
    with zipfile.ZipFile(hostile, "w") as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(manifest))
        zf.writestr("model.onnx", data)
    with pytest.raises(ModelPackageError, match=f"tensor '{weight.name}' refers to external data"):
        Detector(hostile)
    assert np.prod(weight.dims) >= 768 * 768
