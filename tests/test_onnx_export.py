"""The ONNX exporter and torch's fused attention kernel: `dgs-tiny-vit` has an even head count, as every open_clip
ViT has, so in eval mode under no_grad torch runs its attention through ``aten::_native_multi_head_attention``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

from dgs_sdk import PreprocessSpec  # noqa: E402
from dgs_sdk.preprocess import preprocess_batch  # noqa: E402


def test_a_model_that_runs_fused_attention_exports_and_matches_torch(tiny_model, photos, monkeypatch):
    from dgs_export import export_onnx

    fused = torch._native_multi_head_attention
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[4])  # num_heads
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", counted)
    batch = preprocess_batch(list(photos.values()), PreprocessSpec.clip())  # [B, 3, 224, 224]
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(batch)).numpy()
    blocks = len(tiny_model.visual.transformer.resblocks)
    assert len(calls) == blocks and all(heads % 2 == 0 for heads in calls)  # torch runs the fused kernel

    graph = export_onnx(tiny_model, 224)

    assert len(calls) == blocks  # the trace took the composite path
    assert torch.backends.mha.get_fastpath_enabled()  # and the switch is back on
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    assert logits.shape == (len(batch),)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:Exporting to ONNX opset version 99 is not supported")
@pytest.mark.parametrize("enabled", [True, False])
def test_a_failed_export_puts_the_fused_attention_switch_back_as_it_was(tiny_model, monkeypatch, enabled):
    from dgs_export import export_onnx

    monkeypatch.setattr(torch.backends.mha, "_is_fastpath_enabled", enabled)  # restored after the test
    with pytest.raises(ValueError, match="ONNX export at opset 99 failed: Unsupported onnx_opset_version: 99"):
        export_onnx(tiny_model, 224, opset=99)
    assert torch.backends.mha.get_fastpath_enabled() is enabled
