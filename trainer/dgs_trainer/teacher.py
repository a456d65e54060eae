"""The frozen teacher of a distillation: a finished training run (scored with torch) or a `.dgs` model package
(scored through the SDK, as deployed), both giving the logit of "fake" for a batch of model inputs.

A teacher is identified by a checksum of everything its outputs depend on (a run's settings and trained tensors,
a package variant's sha256), which keys the cache of its outputs (`dgs_trainer.teacher_cache`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dgs_sdk.errors import DgsError
from dgs_sdk.preprocess import PreprocessSpec

from .errors import TrainError
from .models import image_embedding_width

__all__ = ["PackageTeacher", "RunTeacher", "Teacher", "open_teacher", "teacher_spec"]

PACKAGE_SUFFIX = ".dgs"


def _kind(path: str | os.PathLike) -> str:
    """``"run"`` or ``"package"``: what a teacher path names; refuses anything else."""
    target = Path(path)
    if not os.path.lexists(target):
        raise TrainError(f"teacher {path}: not found (expected a finished training run folder or a .dgs model "
                         "package)")
    if target.is_dir():
        return "run"
    if target.is_file():
        return "package"
    raise TrainError(f"teacher {path}: neither a folder nor a regular file")


def teacher_spec(path: str | os.PathLike) -> PreprocessSpec:
    """The preprocessing the teacher was trained with (read cheaply: no network is built).

    Raises:
        TrainError: the teacher is not a finished run or a readable model package.
    """
    kind = _kind(path)
    try:
        if kind == "run":
            from .run_folder import RunFolder

            run = RunFolder(path)
            run.check_finished()
            return run.read_preprocess()
        from dgs_sdk.package import read_manifest

        return read_manifest(path).preprocess
    except DgsError as e:
        raise TrainError(f"teacher {e}") from None


class Teacher:
    """A frozen detector scoring model inputs. Subclasses set the attributes and implement `outputs`.

    Attributes:
        path: where it was read from.
        kind: ``"run"`` or ``"package"``.
        spec: its preprocessing; a student must be fed exactly this.
        checksum: sha256 (hex) of what its outputs depend on.
        feature_width: width of its image embedding, or None when it cannot give one (a package).
    """

    path: str
    kind: str
    spec: PreprocessSpec
    checksum: str
    feature_width: int | None

    def outputs(self, images: torch.Tensor, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B]`` float32 and, when ``features`` is asked for, image embeddings ``[B, D]`` float32, on the
        device of ``images``, without gradient."""
        raise NotImplementedError

    def compute(self, device: torch.device) -> str:
        """How its outputs are computed on ``device`` (part of the cache key: a bfloat16 teacher on a GPU and a
        float32 one on a CPU give slightly different logits)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Its identity as a student run records it."""
        return {"path": self.path, "kind": self.kind, "checksum": self.checksum}


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


class RunTeacher(Teacher):
    """A finished training run's inference network (for DGS-Net, LoRA merged), frozen, in eval mode."""

    kind = "run"

    def __init__(self, path: str | os.PathLike) -> None:
        from .run_folder import RunFolder

        run = RunFolder(path)
        try:
            loaded = run.load("cpu")
        except DgsError as e:
            raise TrainError(f"teacher {e}") from None
        self.path = str(path)
        self.spec = loaded.spec
        self.network: nn.Module = loaded.model.inference_model().requires_grad_(False).eval()
        digest = hashlib.sha256(json.dumps(loaded.record["config"], sort_keys=True).encode())
        for file in (run.model_file, run.backbone_file):
            if file.exists():
                _hash_file(digest, file)
        self.checksum = digest.hexdigest()
        self._embedding: torch.Tensor | None = None  # what the image encoder returned in the last call
        encoder = getattr(self.network, "visual", None)
        self.feature_width = None
        if isinstance(encoder, nn.Module):
            # The head reads what the image encoder returns (MiraGe's prompted encoder calls the encoder's parts,
            # not the encoder itself: it gives no embedding here).
            encoder.register_forward_hook(lambda module, args, out: setattr(self, "_embedding", out))
            if getattr(self.network, "head", None) is not None:
                self.feature_width = image_embedding_width(encoder)

    def compute(self, device: torch.device) -> str:
        autocast = device.type == "cuda" and torch.is_autocast_enabled("cuda")
        return f"torch {device.type} {'bfloat16' if autocast else 'float32'}"

    def outputs(self, images: torch.Tensor, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if next(self.network.parameters()).device != images.device:
            self.network.to(images.device)
        self._embedding = None
        with torch.inference_mode():
            logits = self.network(images).float()
            embedding = self._embedding
        if features and embedding is None:
            raise TrainError(f"teacher {self.path}: its network gives no image embedding to match features with "
                             "(use --kd-feature-weight 0)")
        return logits.clone(), (embedding.float().clone() if features else None)


class PackageTeacher(Teacher):
    """A `.dgs` model package scored through the SDK's backend (ONNX Runtime, or TensorRT where present), its
    float32 variant when it has one."""

    kind = "package"
    feature_width = None

    def __init__(self, path: str | os.PathLike, device: str | None = None) -> None:
        from dgs_sdk.backends import create_backend
        from dgs_sdk.package import ModelPackage

        try:
            package = ModelPackage.load(path)
            self.backend = create_backend("auto", package, device, package.manifest.default_precision)
        except DgsError as e:
            raise TrainError(f"teacher {e}") from None
        self.path = str(path)
        self.spec = package.manifest.preprocess
        self.precision = self.backend.precision
        self.checksum = package.variant_sha256(self.precision)

    def compute(self, device: torch.device) -> str:
        return f"{self.backend.name} {self.backend.device} {self.precision}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision}

    def outputs(self, images: torch.Tensor, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if features:
            raise TrainError(f"teacher {self.path}: a model package gives no image embedding to match features with "
                             "(give the teacher's run folder, or use --kd-feature-weight 0)")
        batch = images.detach().float().cpu().numpy()
        try:
            logits = self.backend.run(np.ascontiguousarray(batch, np.float32))
        except DgsError as e:
            raise TrainError(f"teacher {e}") from None
        return torch.from_numpy(np.asarray(logits, np.float32)).to(images.device), None


def open_teacher(path: str | os.PathLike) -> Teacher:
    """The teacher at ``path``: a finished run folder or a `.dgs` model package.

    Raises:
        TrainError: it cannot be found or read (the message names it and the problem).
    """
    return RunTeacher(path) if _kind(path) == "run" else PackageTeacher(path)
