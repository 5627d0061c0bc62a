"""Angular distance (Gromov et al. 2024): remove the contiguous run of n blocks whose ends agree most.

For each start l, the distance arccos(cos(h_l, h_{l+n}))/pi between the input of block l
and the input of block l+n, at each window's last token, averaged over windows; the run of
least distance goes. The run for n blocks need not contain the run for n - 1: not nested.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..search import SearchResult
from .common import dense_pass, make_scorer, one_pass, settings
from .registry import Criterion

log = logging.getLogger(__name__)


def angular_distance(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                     batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Gromov et al.: remove the run l..l+n-1 minimising arccos(cos(h_l, h_{l+n}))/pi at the last token."""
    scorer, _ = make_scorer(model, windows, num_remove, early_barrier, latter_barrier, batch_size)
    total = scorer.total
    # h[l]: input of block l at each window's last token; h[total]: output of the last block.
    h: list[list[torch.Tensor]] = [[] for _ in range(total + 1)]

    def record(i, hin, hout):
        h[i].append(hin[:, -1].float().cpu())
        if i == total - 1:
            h[total].append(hout[:, -1].float().cpu())

    dense_pass(scorer, record, progress, "angular distance")
    states = [torch.cat(parts) for parts in h]

    by_count: dict[int, list[int]] = {}
    rounds = []
    for n in range(1, num_remove + 1):
        scores = {}
        for start in range(early_barrier, total - latter_barrier - n + 1):
            cos = F.cosine_similarity(states[start].double(), states[start + n].double(), dim=-1)
            scores[start] = float((torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean())
        best = min(scores, key=lambda s: (scores[s], s))
        by_count[n] = list(range(best, best + n))
        rounds.append({"n": n, "removed": by_count[n], "score": scores[best],
                       "scores": {str(s): d for s, d in scores.items()}})
        log.info("Angular distance, %d blocks: removes %s (distance %.4f)", n, by_count[n], scores[best])
    return SearchResult(
        method="angular",
        num_blocks=total,
        order=list(by_count[num_remove]),
        rounds=rounds,
        settings=settings(early_barrier, latter_barrier, scorer,
                          "angular distance arccos(cos(h_l, h_{l+n}))/pi at the last token, mean over windows; "
                          "round n scores each start block l of an n-block run"),
        by_count=by_count,
    )


def run_score(result: SearchResult, k: int) -> list[float]:
    """The distance of the chosen run for k blocks (one value: the run is chosen at once)."""
    rounds = result.rounds or []
    order = result.removed(k)
    return [rounds[k - 1]["scores"][str(order[0])]] if k and len(rounds) >= k else []


CRITERION = Criterion(
    name="angular", label="angular distance (Gromov et al.)", score_label="angular distance\nof the n-block run",
    nested=False, run=angular_distance, forwards=one_pass, rank=30, scores=run_score,
)
