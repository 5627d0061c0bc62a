"""SLEB (Song et al., ICML 2024): the greedy search, one block per round, rescored every round.

The search itself lives in `sleb.search` (fast and reference implementations, resumable
state); this module is its registry entry. Nested: round k adds one block to round k - 1's set.
"""

from __future__ import annotations

import torch

from ..search import SearchResult, SearchState, fast_search, reference_search
from .common import removable
from .registry import Criterion

# Fast SLEB scores a candidate with about half a forward pass (prefix reuse, bounded scoring; see docs/search.md).
SEARCH_FORWARD_SHARE = 0.6


def sleb_search(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                batch_size: int | None = None, seed: int = 0, progress: bool = True, state: SearchState | None = None,
                reference: bool = False) -> SearchResult:
    """The greedy search (`reference=True`: the plain loop); resumes from `state` after each round."""
    search = reference_search if reference else fast_search
    return search(model, windows, num_remove, early_barrier, latter_barrier, batch_size, state=state, progress=progress)


def forwards(total: int, k: int, done: int = 0, early: int = 1, latter: int = 1) -> float:
    """Rounds done..k-1, each scoring every alive candidate with about SEARCH_FORWARD_SHARE of a pass."""
    return sum(removable(total - r, early, latter) * SEARCH_FORWARD_SHARE for r in range(done, k))


def round_scores(result: SearchResult, k: int) -> list[float]:
    """The calibration NLL after each round, in removal order."""
    return [r["score"] for r in (result.rounds or [])[:k] if "score" in r]


CRITERION = Criterion(
    name="sleb", label="SLEB (greedy, rescored every round)", score_label="calibration NLL / token\nafter the round",
    nested=True, run=sleb_search, forwards=forwards, rank=10, cheap=False, resumable=True, per_token=True,
    scores=round_scores,
)
