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

    Each piece of work holds one `Reservation` and grows it as it learns what it needs (the file's size, then
    what its header says decoding takes), keeping what it holds while it waits for more. Should every holder be
    waiting to grow, none could ever release: then one of them goes ahead past the budget (by one image's share
    at most, and only until a holder finishes), so there is never a deadlock. A request larger than the whole
    budget is cut to the budget. ``peak`` records the most ever reserved at once.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a memory budget needs a positive capacity, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._holders = 0  # reservations holding bytes
        self._stuck = 0  # of those, the ones waiting to grow
        self._changed = threading.Condition()

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
        """Hold ``nbytes`` from now on: shrinking is immediate, growing waits for the budget (holding on)."""
        budget = self.budget
        nbytes = max(0, min(int(nbytes), budget.capacity))
        with budget._changed:
            if nbytes > self.held:
                holding = self.held > 0
                budget._stuck += holding
                try:
                    budget._changed.wait_for(
                        lambda: budget.used - self.held + nbytes <= budget.capacity
                        or (holding and budget._stuck == budget._holders)
                    )
                finally:
                    budget._stuck -= holding
            budget._holders += (nbytes > 0) - (self.held > 0)
            budget.used += nbytes - self.held
            self.held = nbytes
            budget.peak = max(budget.peak, budget.used)
            budget._changed.notify_all()


DEFAULT_BUDGET = MemoryBudget(DECODE_MEMORY)
