"""The last blocks: remove the deepest removable blocks first, reading no data (a trivial reference)."""

from __future__ import annotations

import torch

from ..blocks import find_blocks
from ..search import SearchResult
from .common import allowed_blocks, no_pass, settings
from .registry import Criterion


def last_blocks(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Remove the deepest removable blocks, going up from the last one before the latter barrier."""
    total = len(find_blocks(model).blocks)
    allowed = allowed_blocks(total, num_remove, early_barrier, latter_barrier)
    order = allowed[::-1][:num_remove]
    return SearchResult(
        method="last",
        num_blocks=total,
        order=order,
        settings=settings(early_barrier, latter_barrier, None, "none: the deepest removable blocks first"),
    )


CRITERION = Criterion(name="last", label="last blocks", score_label="score", nested=True, run=last_blocks,
                      forwards=no_pass, rank=50)
