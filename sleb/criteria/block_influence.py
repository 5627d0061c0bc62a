"""Block influence (ShortGPT, Men et al. 2024): remove the blocks whose output is most like their input.

BI = 1 - cos(block input, block output) per token, averaged over every calibration token;
the blocks of lowest BI go, all chosen from one dense pass. Nested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..search import SearchResult
from .common import dense_pass, lowest_scores, make_scorer, one_pass
from .registry import Criterion


def block_influence(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                    batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """ShortGPT: BI = 1 - cos(block input, block output) per token, averaged over all tokens; drop the lowest."""
    scorer, allowed = make_scorer(model, windows, num_remove, early_barrier, latter_barrier, batch_size)
    sums = torch.zeros(scorer.total, dtype=torch.float64)
    counts = torch.zeros(scorer.total, dtype=torch.float64)

    def record(i, hin, hout):  # a block's input may still sit on the previous block's device
        cos = F.cosine_similarity(hin.to(hout.device).float(), hout.float(), dim=-1)
        sums[i] += float((1 - cos).sum(dtype=torch.float64))
        counts[i] += cos.numel()

    dense_pass(scorer, record, progress, "block influence")
    bi = (sums / counts).tolist()
    scores = {b: bi[b] for b in allowed}
    return lowest_scores("block-influence", scores, num_remove, scorer, early_barrier, latter_barrier,
                         "block influence: 1 - cosine(input, output), mean over all calibration tokens")


CRITERION = Criterion(
    name="block-influence", label="block influence (ShortGPT)", score_label="block influence\n(1 - cos in/out)",
    nested=True, run=block_influence, forwards=one_pass, rank=20,
)
