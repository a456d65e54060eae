"""A memory budget shared by threads that decode images: eight workers meeting eight large images take turns
instead of taking eight times the memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .limits import DECODE_MEMORY

__all__ = ["MemoryBudget", "Reservation", "DEFAULT_BUDGET"]


class MemoryBudget:
    """Bytes that concurrent work may hold together.

    Each piece of work holds one `Reservation`, which it can grow as it learns what it needs (the file's size,
    then the decoded size from the header). A reservation that grows first gives back what it holds, then waits
    for the whole amount, so no thread ever waits while holding part of the budget: there is no deadlock. A
    request larger than the whole budget waits until the budget is entirely free, so it always proceeds.
    ``peak`` records the most ever reserved at once.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a memory budget needs a positive capacity, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._free = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int = 0) -> Iterator[Reservation]:
        """Hold ``nbytes`` (waiting for them) until the block ends; the `Reservation` may be resized inside."""
        reservation = Reservation(self)
        try:
            reservation.resize(nbytes)
            yield reservation
        finally:
            reservation.resize(0)


class Reservation:
    """The share of a `MemoryBudget` one piece of work holds."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0

    def resize(self, nbytes: int) -> None:
        """Hold ``nbytes`` from now on: shrinking is immediate, growing waits for the budget."""
        budget = self.budget
        nbytes = max(0, min(int(nbytes), budget.capacity))
        with budget._free:
            budget.used -= self.held
            self.held = 0
            budget._free.notify_all()
            budget._free.wait_for(lambda: budget.used + nbytes <= budget.capacity)
            budget.used += nbytes
            self.held = nbytes
            budget.peak = max(budget.peak, budget.used)


DEFAULT_BUDGET = MemoryBudget(DECODE_MEMORY)
