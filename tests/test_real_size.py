"""Exports at the size users deploy: ViT-B/16 models (random weights, 12 heads, so torch runs its fused attention
kernel) as a plain detector, a LoRA-merged DGS-Net student and a MiraGe-prompted encoder, each exported, loaded
through every check and scored by the SDK as torch scores them; and a graph refused once one of its real weights is
moved to external data, by the SDK and by the native core's package reader; and an occlusion map of it."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from torch import nn  # noqa: E402

from dgs_sdk import Detector, ModelPackage, ModelPackageError, PreprocessSpec  # noqa: E402
from dgs_sdk.package import MANIFEST_NAME  # noqa: E402
from dgs_sdk.preprocess import preprocess_batch  # noqa: E402

pytestmark = pytest.mark.slow

ARCH = "ViT-B-16"


def export(model: nn.Module, out, photos: dict[str, np.ndarray], head: str):
    """`export_package` (which verifies ONNX Runtime against torch on two photos) with the CLIP transform."""
    from dgs_export import export_package

    return export_package(model, out, PreprocessSpec.clip(), list(photos.values())[:2],
                          architecture={"arch": ARCH, "head": head})


def assert_scores_as_torch(path, model: nn.Module, photos: dict[str, np.ndarray]) -> np.ndarray:
    """The SDK's probabilities for every photo equal torch's to 1e-4; returns torch's."""
    from dgs_export import torch_probabilities

    results = Detector(path, device="cpu", batch_size=4).predict(list(photos.values()))  # two batches, one short
    assert all(r.ok for r in results), [r.error for r in results]
    expected = torch_probabilities(model, preprocess_batch(list(photos.values()), PreprocessSpec.clip()))
    np.testing.assert_allclose([r.probability for r in results], expected, atol=1e-4, rtol=0)
    assert len({round(float(p), 6) for p in expected}) > 1  # the images are told apart: the comparison means something
    return expected


@pytest.fixture(scope="module")
def vit_b_detector():
    from dgs_trainer import build_image_detector

    torch.manual_seed(0)
    return build_image_detector(ARCH, pretrained="none").eval()


@pytest.fixture(scope="module")
def vit_b_package(vit_b_detector, tmp_path_factory, photos):
    return export(vit_b_detector, tmp_path_factory.mktemp("vit-b") / "vit-b-16.dgs", photos, "linear")


@pytest.fixture(scope="module")
def vit_b_clip():
    """One frozen ViT-B-16 CLIP, image and text towers, for the methods built on it (neither changes it)."""
    from dgs_trainer.models import create_clip

    torch.manual_seed(1)
    return create_clip(ARCH, pretrained="none").requires_grad_(False).eval()


def test_a_vit_b_package_passes_every_check_and_scores_as_torch_does(vit_b_package, vit_b_detector, photos):
    package = ModelPackage.load(vit_b_package)
    assert package.manifest.files["model.onnx"]["size"] > 300_000_000  # 86M float32 parameters
    assert package.fixed_batch is None
    assert package.manifest.provenance["parity"]["max_abs_probability_diff"] <= 1e-4
    assert_scores_as_torch(vit_b_package, vit_b_detector, photos)


def test_a_lora_merged_dgs_student_exports_and_scores_as_torch_does(vit_b_clip, photos, tmp_path):
    from dgs_export import torch_probabilities
    from dgs_trainer.lora import LoRAAttention, LoRAConfig
    from dgs_trainer.methods.dgs import DGSNet
    from dgs_trainer.models import ClipImageDetector

    dim = vit_b_clip.visual.output_dim
    net = DGSNet(vit_b_clip, nn.Linear(dim, 1), LoRAConfig(), help_weight=0.2, caption_tokens=None)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B starts at zero (the identity update): give it values so the merge changes the weights
        for module in net.student.modules():
            if isinstance(module, LoRAAttention):
                for b in module.lora_B.values():
                    b.copy_(torch.randn(b.shape, generator=generator) * 0.05)
    model = net.inference_model()
    attention = [block.attn for block in model.visual.transformer.resblocks]
    assert len(attention) == 12 and all(type(a) is nn.MultiheadAttention for a in attention)  # merged back

    expected = assert_scores_as_torch(export(model, tmp_path / "dgs.dgs", photos, "dgs"), model, photos)

    unmerged = ClipImageDetector.from_parts(vit_b_clip.visual, net.img_fc)
    batch = preprocess_batch(list(photos.values()), PreprocessSpec.clip())
    assert np.max(np.abs(expected - torch_probabilities(unmerged, batch))) > 1e-2  # the LoRA updates are in the graph


def test_a_mirage_prompted_encoder_exports_and_scores_as_torch_does(vit_b_clip, photos, tmp_path):
    import open_clip

    from dgs_trainer.methods.mirage import MiraGe, MiraGeConfig, PromptedImageDetector

    mirage = MiraGe(vit_b_clip, open_clip.get_tokenizer(ARCH), MiraGeConfig())
    model = mirage.inference_model()
    assert isinstance(model, PromptedImageDetector) and model.prompts.shape[0] > 1  # deep prompts, several layers

    assert_scores_as_torch(export(model, tmp_path / "mirage.dgs", photos, "mirage"), model, photos)


def external_data_package(vit_b_package: Path, out: Path) -> tuple[Path, onnx.TensorProto]:
    """The ViT-B package with its largest weight moved to external data naming /etc/passwd, and that weight."""
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
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(manifest))
        zf.writestr("model.onnx", data)
    return out, weight


def test_a_vit_b_graph_with_one_weight_moved_to_external_data_is_refused(vit_b_package, tmp_path):
    hostile, weight = external_data_package(vit_b_package, tmp_path / "hostile.dgs")
    with pytest.raises(ModelPackageError, match=f"tensor '{weight.name}' refers to external data"):
        Detector(hostile)
    assert np.prod(weight.dims) >= 768 * 768


def test_the_native_reader_reads_and_refuses_vit_b_packages_as_python_does(vit_b_package, tmp_path):
    dgs_native = pytest.importorskip("dgs_native")
    from test_native_package import expected_dict

    package = ModelPackage.load(vit_b_package)
    expected = expected_dict(package.manifest, vit_b_package)
    expected.update(precision=package.manifest.default_precision, model_sha256=package.model_sha256,
                    batch=package.fixed_batch)
    assert dgs_native.load_package(str(vit_b_package)) == expected
    hostile, weight = external_data_package(vit_b_package, tmp_path / "hostile.dgs")
    with pytest.raises(dgs_native.ModelPackageError, match=f"tensor '{weight.name}' refers to external data"):
        dgs_native.load_package(str(hostile))


def test_a_vit_b_int8_cpu_variant_is_what_auto_runs_on_cpu_and_tracks_float32(vit_b_package, photos, tmp_path):
    """The CPU variant of a real-size package: converted, written beside fp32, chosen by `auto` on the CPU and
    scored through the Detector. Bound: logits within 0.6 of float32's (0.27 measured on random ViT-B-16 weights,
    benchmarks/RESULTS.md) and the images in nearly the same order."""
    from scipy.stats import spearmanr

    from dgs_export.precision import to_int8_cpu
    from dgs_sdk import write_package
    from dgs_sdk.package import Variant

    package = ModelPackage.load(vit_b_package)
    manifest = package.manifest
    manifest.variants["int8-cpu"] = Variant("int8-cpu", "model.int8-cpu.onnx")
    members = {"model.onnx": package.model_bytes, "model.int8-cpu.onnx": to_int8_cpu(package.model_bytes)}
    path = write_package(tmp_path / "vit-b-16-variants.dgs", manifest, members)
    images = list(photos.values())
    auto = Detector(path, device="cpu").predict(images)
    fp32 = Detector(path, device="cpu", precision="fp32").predict(images)
    assert {r.variant for r in auto} == {"int8-cpu"} and {r.variant for r in fp32} == {"fp32"}
    logits, reference = np.array([r.logit for r in auto]), np.array([r.logit for r in fp32])
    assert np.abs(logits - reference).max() < 0.6
    assert spearmanr(logits, reference).statistic > 0.8
    assert ModelPackage.load(path).manifest.files["model.int8-cpu.onnx"]["size"] < 0.3 * len(package.model_bytes)


def test_dgs_explain_on_a_vit_b_package(vit_b_package, photos, tmp_path):
    """The occlusion map of a ViT-B-16 package: 16 masked inputs batched through ONNX Runtime, the unmasked score
    equal to the Detector's, and a map that varies over the image."""
    pytest.importorskip("matplotlib")
    from dgs_sdk.explain import explain_image, write_explanation
    from dgs_sdk.occlusion import OcclusionSettings

    detector = Detector(vit_b_package, device="cpu")
    photo = photos["coffee"]
    explanation = explain_image(detector, photo, OcclusionSettings(window=56, stride=56))
    assert explanation.probability == pytest.approx(detector.predict(photo).probability, abs=1e-5)
    drops = explanation.occlusion.drops
    assert drops.shape == (4, 4) and np.isfinite(drops).all() and drops.std() > 0
    written = write_explanation(explanation, tmp_path / "explain")
    assert sorted(p.name for p in written) == ["explain.json", "occlusion.png"]
