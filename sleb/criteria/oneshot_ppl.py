"""One-shot perplexity (Kim et al. 2024, Shortened LLaMA): score each block by the calibration NLL with
it alone bypassed, and remove the k lowest at once. Nested."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..nll import check_head
from ..search import SearchResult
from .common import lowest_scores, make_scorer, removable
from .registry import Criterion

# Each bypassed block replays the dense outputs before it: about half a forward pass per block on average.
REPLAY_SHARE = 0.6


def oneshot_ppl(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Shortened LLaMA one-shot PPL: total calibration NLL with each block alone bypassed; drop the k lowest."""
    scorer, allowed = make_scorer(model, windows, num_remove, early_barrier, latter_barrier, batch_size)
    check_head(model, windows)
    scores = dict.fromkeys(allowed, 0.0)
    was_training = model.training
    model.eval()
    try:
        with scorer.switch, tqdm(total=len(allowed) * len(scorer.batches), desc="one-shot PPL", unit="batch",
                                 disable=not progress) as bar:
            for batch in scorer.batches:
                # Prefix reuse: blocks before the bypassed one replay the dense outputs.
                outputs = scorer.record_outputs(batch, set())
                for b in allowed:
                    replay = {i: out for i, out in outputs.items() if i < b}
                    scores[b] += scorer.nll(batch, {b}, replay)
                    bar.update(1)
    finally:
        model.train(was_training)
    return lowest_scores("oneshot-ppl", scores, num_remove, scorer, early_barrier, latter_barrier,
                         "total NLL (nats) over the calibration tokens with the block alone bypassed")


def forwards(total: int, k: int, done: int = 0, early: int = 1, latter: int = 1) -> float:
    """One pass per removable block (the pre-registry cost plan's estimate, kept)."""
    return float(removable(total, early, latter))


CRITERION = Criterion(
    name="oneshot-ppl", label="one-shot perplexity (Shortened LLaMA)",
    score_label="calibration NLL / token\nwith the block alone bypassed", nested=True, run=oneshot_ppl,
    forwards=forwards, rank=40, per_token=True,
)
