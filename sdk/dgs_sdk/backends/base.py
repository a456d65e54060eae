"""The small interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from ..errors import BackendUnavailable, ModelPackageError
from ..package import ModelPackage

__all__ = ["Backend"]


class Backend(ABC):
    """Runs a model package's network on preprocessed batches.

    A backend is created from a verified `ModelPackage`, a device string (``None`` = best available, ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``) and the precision variant to run (`dgs_sdk.package.PRECISIONS`). Heavy runtimes
    are imported inside the backend, never at SDK import.
    Subclasses implement `_infer` for one batch of the graph's own size; `run` takes any number of images
    (splitting and padding them for a graph of fixed batch) and checks every output the graph gives.
    """

    name: ClassVar[str]
    # The variants this backend runs, fastest first; `precision="auto"` takes the first one a package has.
    precisions: ClassVar[tuple[str, ...]]

    def __init__(self, package: ModelPackage, device: str | None = None, precision: str = "fp32") -> None:
        if precision not in self.precisions:
            raise BackendUnavailable(f"{package.path}: the {self.name} backend does not run the {precision!r} "
                                     f"variant (it runs {', '.join(self.precisions)})")
        self.package = package
        self.precision = precision
        self.model_bytes = package.variant_bytes(precision)
        self.model_sha256 = package.variant_sha256(precision)
        self.where = f"{package.path}: {package.manifest.variants[precision].file}"
        self.fixed_batch = package.check_graph(precision=precision).batch  # None: the graph takes any batch size

    @classmethod
    def preferred_precisions(cls, device: str | None) -> tuple[str, ...]:
        """The variants this backend runs on ``device``, fastest first (`precisions` unless it depends)."""
        return cls.precisions

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this backend's runtime can be imported here (cheap, no model needed)."""

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why `is_available` is false, naming what to install or fix; empty when the backend is available."""
        return "" if cls.is_available() else f"{cls.name} cannot be imported"

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """The graph's raw output for ``batch`` ``[B, 3, S, S]`` float32, B being the graph's batch if fixed."""

    @property
    @abstractmethod
    def device(self) -> str:
        """Where the model runs, in words (``"cpu"``, ``"cuda:0"``...)."""

    def describe(self) -> str:
        return f"{self.name} on {self.device}, {self.precision}"

    def cancel(self) -> None:  # noqa: B027 - optional: a runtime that cannot stop a run leaves it running
        """Stop the run in progress, from another thread, as soon as the runtime can; a no-op where it cannot."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits of "fake" ``[B]`` float32 for a preprocessed batch ``[B, 3, S, S]`` float32.

        Raises:
            ModelPackageError: the graph gave an output other than one logit per image.
        """
        batch = np.ascontiguousarray(batch, np.float32)
        k = self.fixed_batch
        if k is None or len(batch) == k:
            return self._checked(self._infer(batch), len(batch))
        out = []
        for start in range(0, len(batch), k):
            chunk = batch[start : start + k]
            padded = np.concatenate([chunk, np.zeros((k - len(chunk), *chunk.shape[1:]), np.float32)])
            out.append(self._checked(self._infer(padded), k)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _checked(self, output: np.ndarray, images: int) -> np.ndarray:
        output = np.asarray(output)
        if output.shape != (images,) or output.dtype.kind != "f":
            raise ModelPackageError(
                f"{self.where}: gave {output.dtype} output of shape {list(output.shape)} for a batch of {images}; "
                f"a dgs model gives one float logit per image ([{images}])"
            )
        return output.astype(np.float32, copy=False)
