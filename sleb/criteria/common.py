"""What the one-shot criteria share: the budget check, micro-batches, one dense pass, and the result."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..nll import final_hidden
from ..search import SearchResult, _Scorer, candidates, check_budget, default_batch_size

log = logging.getLogger(__name__)


def allowed_blocks(total: int, num_remove: int, early_barrier: int, latter_barrier: int) -> list[int]:
    """Check the budget and return the removable block indices (inside the barriers)."""
    check_budget(total, num_remove, early_barrier, latter_barrier)
    return candidates(list(range(total)), early_barrier, latter_barrier)


def make_scorer(model, windows: torch.Tensor, num_remove: int, early_barrier: int, latter_barrier: int,
                batch_size: int | None) -> tuple[_Scorer, list[int]]:
    """Find the blocks, split the windows into micro-batches, and check the budget before any forward."""
    scorer = _Scorer(model, windows, batch_size or default_batch_size(*windows.shape))
    return scorer, allowed_blocks(scorer.total, num_remove, early_barrier, latter_barrier)


def dense_pass(scorer: _Scorer, recorder: Callable, progress: bool, desc: str) -> None:
    """One eval-mode pass of the unpruned model over every micro-batch, calling `recorder` per block."""
    was_training = scorer.model.training
    scorer.model.eval()
    try:
        with scorer.switch, torch.inference_mode():
            for batch in tqdm(scorer.batches, desc=desc, unit="batch", disable=not progress):
                with scorer.switch.state(recorder=recorder):
                    final_hidden(scorer.model, batch)
    finally:
        scorer.model.train(was_training)


def settings(early_barrier: int, latter_barrier: int, scorer: _Scorer | None, score: str, **extra) -> dict:
    out = {"early_barrier": early_barrier, "latter_barrier": latter_barrier}
    if scorer is not None:
        out["batch_size"] = len(scorer.batches[0])
    out["score"] = score
    out.update(extra)
    return out


def ascending(scores: dict[int, float]) -> list[int]:
    """Blocks by ascending score; ties go to the lower index (as in SLEB)."""
    return sorted(scores, key=lambda b: (scores[b], b))


def lowest_scores(method: str, scores: dict[int, float], num_remove: int, scorer: _Scorer, early_barrier: int,
                  latter_barrier: int, score: str) -> SearchResult:
    """A one-shot criterion's result: the `num_remove` blocks of lowest score, all scored in one round."""
    order = ascending(scores)[:num_remove]
    log.info("%s removes %s", method, order)
    return SearchResult(
        method=method,
        num_blocks=scorer.total,
        order=order,
        rounds=[{"scores": {str(b): s for b, s in scores.items()}}],
        settings=settings(early_barrier, latter_barrier, scorer, score),
    )


def removable(total: int, early_barrier: int, latter_barrier: int) -> int:
    return max(0, total - early_barrier - latter_barrier)


def one_pass(total: int, k: int, done: int = 0, early: int = 1, latter: int = 1) -> float:
    """Cost of a criterion that reads one dense forward pass."""
    return 1.0


def no_pass(total: int, k: int, done: int = 0, early: int = 1, latter: int = 1) -> float:
    """Cost of a criterion that reads no data."""
    return 0.0
