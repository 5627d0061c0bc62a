"""First come, first served access to one model, with each waiting visitor's place in the line.

Everything that runs a model (both answers of one request, one search round, a perplexity)
takes a turn; the page shows `position` while a visitor waits. A turn is given back when
the holder finishes, fails or is cancelled (Gradio closes a cancelled handler's generator,
which runs its `finally`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator


class Turns:
    """A FIFO lock: `ticket = take()`, `wait(ticket)` until it is first, then `give_back(ticket)`."""

    def __init__(self):
        self._cond = threading.Condition()
        self._line: list[int] = []
        self._numbers = itertools.count(1)

    def take(self) -> int:
        with self._cond:
            ticket = next(self._numbers)
            self._line.append(ticket)
            return ticket

    def position(self, ticket: int) -> tuple[int, int]:
        """(1-based place in the line, line length); place 1 holds the turn."""
        with self._cond:
            return (self._line.index(ticket) + 1 if ticket in self._line else 0), len(self._line)

    def wait(self, ticket: int, timeout: float | None = None) -> bool:
        """True once `ticket` is first in line; False when `timeout` passes first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._line and self._line[0] == ticket, timeout)

    def give_back(self, ticket: int) -> None:
        with self._cond:
            if ticket in self._line:
                self._line.remove(ticket)
                self._cond.notify_all()

    def waiting(self, ticket: int, every_s: float = 0.5) -> Iterator[tuple[int, int]]:
        """Yields (place, line length) every `every_s` until `ticket` holds the turn."""
        while not self.wait(ticket, every_s):
            yield self.position(ticket)

    @property
    def length(self) -> int:
        with self._cond:
            return len(self._line)
