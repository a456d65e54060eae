"""The small interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from ..package import ModelPackage

__all__ = ["Backend"]


class Backend(ABC):
    """Runs a model package's network on preprocessed batches.

    A backend is created from a verified `ModelPackage` and a device string (``None`` = best available,
    ``"cpu"``, ``"cuda"`` or ``"cuda:N"``). Heavy runtimes are imported inside the backend, never at SDK import.
    """

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether this backend's runtime can be imported here (cheap, no model needed)."""

    @abstractmethod
    def __init__(self, package: ModelPackage, device: str | None = None) -> None: ...

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits of "fake" ``[B]`` float32 for a preprocessed batch ``[B, 3, S, S]`` float32."""

    @property
    @abstractmethod
    def device(self) -> str:
        """Where the model runs, in words (``"cpu"``, ``"cuda:0"``...)."""

    def describe(self) -> str:
        return f"{self.name} on {self.device}"
