"""Training methods, one module each, and the registry that maps their names to them.

Adding a method: write ``methods/<name>.py`` with its options dataclass and a class following `Method`, and add
it to `METHODS` below. The training loop, `dgs train`'s flags, evaluation and export pick it up from here.
"""

from __future__ import annotations

from .base import Method, MethodContext, Stage
from .dgs import DGSMethod
from .distill import DistillMethod
from .lora import LoRAMethod
from .mirage import MiraGeMethod
from .probe import ProbeMethod

__all__ = ["METHODS", "Method", "MethodContext", "Stage", "method_class"]

# Explicit, in the order `dgs train --help` lists them.
METHODS: dict[str, type] = {cls.name: cls for cls in (DGSMethod, MiraGeMethod, LoRAMethod, ProbeMethod, DistillMethod)}


def method_class(name: str) -> type:
    """The method registered as ``name``.

    Raises:
        KeyError: no such method (the caller names the file or flag it came from).
    """
    return METHODS[name]
