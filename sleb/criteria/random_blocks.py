"""Random blocks: a seeded random permutation of the removable blocks (a trivial reference)."""

from __future__ import annotations

import torch

from ..blocks import find_blocks
from ..search import SearchResult
from .common import allowed_blocks, no_pass, settings
from .registry import Criterion


def random_blocks(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                  batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Remove a seeded random permutation of the removable blocks."""
    total = len(find_blocks(model).blocks)
    allowed = allowed_blocks(total, num_remove, early_barrier, latter_barrier)
    perm = torch.randperm(len(allowed), generator=torch.Generator().manual_seed(seed)).tolist()
    order = [allowed[p] for p in perm][:num_remove]
    return SearchResult(
        method="random",
        num_blocks=total,
        order=order,
        settings=settings(early_barrier, latter_barrier, None, "none: a random permutation", seed=seed),
    )


CRITERION = Criterion(name="random", label="random blocks", score_label="score", nested=True, run=random_blocks,
                      forwards=no_pass, rank=60, seeded=True)
