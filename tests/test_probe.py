"""The linear probe: frozen encoder, trainable head, learns a separable toy problem."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dgs_trainer.methods.probe import LinearProbe  # noqa: E402
from dgs_trainer.models import create_clip  # noqa: E402


def test_probe_trains_only_its_head_and_fits_separable_inputs():
    torch.manual_seed(0)
    visual = create_clip("dgs-tiny-vit", pretrained="none").visual
    probe = LinearProbe(visual, visual.output_dim).train()
    frozen = {k: v.clone() for k, v in probe.visual.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    # Two kinds of input that the random encoder maps to different features: flat grey vs noise.
    images = torch.cat([torch.zeros(8, 3, 224, 224), torch.randn(8, 3, 224, 224, generator=g)])
    labels = torch.cat([torch.zeros(8), torch.ones(8)])
    optimizer = torch.optim.Adam(probe.trainable_parameters(), lr=5e-2)
    for _ in range(100):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(images), labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    assert ((probe(images) > 0).float() == labels).all()
    for name, value in probe.visual.state_dict().items():
        torch.testing.assert_close(value, frozen[name], atol=0, rtol=0)
