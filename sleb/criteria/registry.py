"""The criterion record: what every part of sleb needs to know about a way of choosing blocks.

A criterion module defines one `CRITERION = Criterion(...)`; `sleb.criteria` finds it.
The CLI's choices, `prune`, the app's dropdown and cost plan, the reports and the cards
all read these fields instead of naming methods themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..search import SearchResult


def per_block_scores(result: SearchResult, k: int) -> list[float]:
    """One score per removed block, in removal order, from a one-shot criterion's single round."""
    rounds = result.rounds or []
    if not rounds or "scores" not in rounds[0]:
        return []
    scores = rounds[0]["scores"]
    return [scores[str(b)] for b in result.removed(k) if str(b) in scores]


@dataclass(frozen=True)
class Criterion:
    """A removal criterion.

    - `run(model, windows, num_remove, early_barrier, latter_barrier, batch_size=, seed=, progress=, state=)`
      returns a `SearchResult` (`state`: a `SearchState`, used by resumable criteria only).
    - `forwards(total, k, done, early, latter)`: estimated cost in full forward passes over the
      calibration tokens to choose `k` of `total` blocks when `done` rounds are already saved.
    - `nested`: the set for k blocks always contains the set for k - 1.
    - `cheap`: costs at most one forward per removable block, so `--refine all` seeds from it.
    - `scores(result, k)`: one score per removed block for the app's plot; `per_token`: divide
      them by the calibration tokens (scores that are summed NLLs).
    """

    name: str
    label: str
    score_label: str
    nested: bool
    run: Callable[..., SearchResult]
    forwards: Callable[[int, int, int, int, int], float]
    rank: int  # position in the CLI choices and the app's dropdown
    cheap: bool = True
    resumable: bool = False
    seeded: bool = False  # its choice depends on `seed` (random)
    per_token: bool = False
    scores: Callable[[SearchResult, int], list[float]] = per_block_scores
