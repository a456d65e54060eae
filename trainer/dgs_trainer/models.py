"""open_clip backbones and the image detector built on them.

Architectures are open_clip model names (``ViT-L-14``, ``ViT-B-16``...) plus the configs shipped in
``model_configs/`` (``dgs-tiny-vit``: a few million parameters, for tests and the demo).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import open_clip
import torch
from torch import nn

from .errors import TrainError

__all__ = [
    "MODEL_CONFIG_DIR",
    "ClipImageDetector",
    "build_image_detector",
    "create_clip",
    "image_embedding_width",
    "list_archs",
    "trained_with_quick_gelu",
]

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def _register_configs() -> None:
    if not set(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")) <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def list_archs() -> list[str]:
    """Every architecture name `create_clip` accepts."""
    _register_configs()
    return open_clip.list_models()


def trained_with_quick_gelu(arch: str, pretrained: str | os.PathLike | None) -> bool:
    """Whether the weights of an open_clip pretrained tag were trained with QuickGELU (OpenAI's were, for every
    architecture); False for random weights, local checkpoints and unknown tags.

    open_clip builds ``ViT-L-14`` with GELU and only warns when ``openai`` weights are loaded into it; every
    activation then differs from the network those weights were trained in (by up to 0.02 on [-6, 6]).
    """
    _register_configs()
    if pretrained is None or str(pretrained).lower() == "none" or os.path.exists(pretrained):
        return False
    if arch.endswith("-quickgelu"):
        return False  # the architecture itself already is the QuickGELU variant
    return bool(open_clip.get_pretrained_cfg(arch, str(pretrained)).get("quick_gelu", False))


def create_clip(arch: str, pretrained: str | os.PathLike | None = "none", device: str = "cpu",
                quick_gelu: bool | None = None, image_size: int | None = None) -> nn.Module:
    """Create an open_clip model.

    Args:
        arch: open_clip model name or a shipped config name (``timm-convnext_atto``: a timm backbone as the image
            tower, through open_clip's timm towers).
        pretrained: an open_clip pretrained tag (``openai``), a local checkpoint path, or ``none``/``None``
            for random initialisation. For an architecture with a timm image tower, a local file may also hold
            the timm backbone's own weights (as timm saves them); they are loaded into the image tower.
        device: where to place the model.
        quick_gelu: build the QuickGELU variant of ``arch``; None decides by `trained_with_quick_gelu`.
        image_size: side of the image input when it differs from the architecture's (open_clip interpolates the
            positional embedding of pretrained ViT weights); None keeps the architecture's.
    """
    _register_configs()
    if quick_gelu is None:
        quick_gelu = trained_with_quick_gelu(arch, pretrained) if arch in open_clip.list_models() else False
    if arch not in open_clip.list_models():
        raise TrainError(f"architecture {arch!r} is unknown (e.g. ViT-L-14, ViT-B-16, dgs-tiny-vit)")
    if pretrained is None or str(pretrained).lower() == "none":
        weights = None
    elif os.path.exists(pretrained):
        weights = os.fspath(pretrained)
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise TrainError(
                f"pretrained {pretrained!r} is neither a local checkpoint nor a tag of {arch} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        weights = str(pretrained)
    sizing = {} if image_size is None else {"force_image_size": int(image_size)}
    if weights is not None:
        try:
            return open_clip.create_model(arch, pretrained=weights, device=device, force_quick_gelu=quick_gelu,
                                          **sizing)
        except Exception as e:  # a damaged or foreign checkpoint fails deep inside torch.load
            if not (_has_timm_tower(arch) and os.path.isfile(weights)):
                raise TrainError(f"{weights}: cannot be loaded as {arch} weights ({type(e).__name__}: {e})") from None
            clip_error = " ".join(f"{type(e).__name__}: {e}".split())
        model = _random_clip(arch, device, quick_gelu, sizing)
        _load_timm_backbone(model, weights, arch, clip_error)
        return model
    return _random_clip(arch, device, quick_gelu, sizing)


def _random_clip(arch: str, device: str, quick_gelu: bool, sizing: dict) -> nn.Module:
    quiet = _DropMessage("No pretrained weights loaded")  # asked for on purpose: not worth a warning
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(arch, pretrained=None, device=device, force_quick_gelu=quick_gelu, **sizing)
    finally:
        logging.getLogger().removeFilter(quiet)


def _has_timm_tower(arch: str) -> bool:
    return "timm_model_name" in (open_clip.get_model_config(arch) or {}).get("vision_cfg", {})


def _load_timm_backbone(model: nn.Module, path: str, arch: str, clip_error: str) -> None:
    """Load a timm backbone's own checkpoint into the timm image tower of ``model``: every tensor of the tower must
    be in it (a classifier the tower does not have is ignored)."""
    from open_clip.factory import load_state_dict

    trunk = model.visual.trunk
    try:
        state = load_state_dict(path, device="cpu")
        expected = trunk.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"{len(missing)} of the backbone's {len(expected)} tensors are missing, e.g. {missing[0]}")
        trunk.load_state_dict({k: state[k] for k in expected}, strict=True)
    except Exception as e:
        raise TrainError(f"{path}: cannot be loaded as {arch} weights, neither as an open_clip checkpoint "
                         f"({clip_error[:200]}) nor as its timm backbone ({type(e).__name__}: {str(e)[:200]})"
                         ) from None


def image_embedding_width(visual: nn.Module) -> int:
    """The width of what an open_clip image tower returns (its ``output_dim``; a timm tower is asked by running
    it once on a blank image)."""
    width = getattr(visual, "output_dim", None)
    if isinstance(width, int):
        return width
    size = visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    parameter = next(visual.parameters())
    with torch.no_grad():
        was_training = visual.training
        visual.eval()
        out = visual(torch.zeros(1, 3, *size, device=parameter.device, dtype=parameter.dtype))
        visual.train(was_training)
    return int(out.shape[-1])


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class ClipImageDetector(nn.Module):
    """CLIP image encoder and a linear head: image batch ``[B, 3, S, S]`` -> logit of "fake" ``[B]``."""

    def __init__(self, visual: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, 1)

    @classmethod
    def from_parts(cls, visual: nn.Module, head: nn.Linear) -> ClipImageDetector:
        """An eval-mode detector of ``visual`` with a copy of a trained ``head``."""
        detector = cls(visual, head.in_features)
        detector.head.load_state_dict(head.state_dict())
        return detector.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.visual(image)  # [B, D]
        return self.head(features).squeeze(-1)


def build_image_detector(arch: str, pretrained: str | os.PathLike | None = "none",
                         quick_gelu: bool | None = None) -> ClipImageDetector:
    """The CLIP image tower of ``arch`` and a fresh linear head (a probe's inference network)."""
    clip = create_clip(arch, pretrained, quick_gelu=quick_gelu)
    embed_dim = clip.visual.output_dim
    return ClipImageDetector(clip.visual, embed_dim)
