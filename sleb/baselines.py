"""Baseline block-removal methods to compare SLEB against, on the same calibration data.

- `block_influence` (ShortGPT, Men et al. 2024): remove the blocks whose output is most
  similar to their input (lowest 1 - cosine, averaged over tokens), one-shot.
- `angular_distance` (Gromov et al. 2024): remove the run of n contiguous blocks whose
  input and output, at each window's last token, are closest in angle. Not nested.
- `oneshot_ppl` (Kim et al. 2024, Shortened LLaMA): score each block by the calibration
  NLL with it alone bypassed; remove the k lowest at once.
- `last_blocks` and `random_blocks`: trivial references.

Every method has the signature of `sleb.search.fast_search` (plus `seed`, minus `state`),
respects the same barriers, and returns a `SearchResult`. Block inputs and outputs come
from the model's own forward through `BlockSwitch` recorders; nothing re-implements a layer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .blocks import find_blocks
from .nll import check_head, final_hidden
from .search import SearchResult, _Scorer, candidates, check_budget, default_batch_size

log = logging.getLogger(__name__)


def _allowed(total: int, num_remove: int, early_barrier: int, latter_barrier: int) -> list[int]:
    """Check the budget and return the removable block indices (inside the barriers)."""
    check_budget(total, num_remove, early_barrier, latter_barrier)
    return candidates(list(range(total)), early_barrier, latter_barrier)


def _scorer(model, windows: torch.Tensor, num_remove: int, early_barrier: int, latter_barrier: int,
            batch_size: int | None) -> tuple[_Scorer, list[int]]:
    """Find the blocks, split the windows into micro-batches, and check the budget before any forward."""
    scorer = _Scorer(model, windows, batch_size or default_batch_size(*windows.shape))
    return scorer, _allowed(scorer.total, num_remove, early_barrier, latter_barrier)


def _dense_pass(scorer: _Scorer, recorder: Callable, progress: bool, desc: str) -> None:
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


def _settings(early_barrier: int, latter_barrier: int, scorer: _Scorer | None, score: str, **extra) -> dict:
    settings = {"early_barrier": early_barrier, "latter_barrier": latter_barrier}
    if scorer is not None:
        settings["batch_size"] = len(scorer.batches[0])
    settings["score"] = score
    settings.update(extra)
    return settings


def _ascending(scores: dict[int, float]) -> list[int]:
    """Blocks by ascending score; ties go to the lower index (as in SLEB)."""
    return sorted(scores, key=lambda b: (scores[b], b))


def _lowest_scores(method: str, scores: dict[int, float], num_remove: int, scorer: _Scorer, early_barrier: int,
                   latter_barrier: int, score: str) -> SearchResult:
    """A one-shot criterion's result: the `num_remove` blocks of lowest score, all scored in one round."""
    order = _ascending(scores)[:num_remove]
    log.info("%s removes %s", method, order)
    return SearchResult(
        method=method,
        num_blocks=scorer.total,
        order=order,
        rounds=[{"scores": {str(b): s for b, s in scores.items()}}],
        settings=_settings(early_barrier, latter_barrier, scorer, score),
    )


def block_influence(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                    batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """ShortGPT: BI = 1 - cos(block input, block output) per token, averaged over all tokens; drop the lowest."""
    scorer, allowed = _scorer(model, windows, num_remove, early_barrier, latter_barrier, batch_size)
    sums = torch.zeros(scorer.total, dtype=torch.float64)
    counts = torch.zeros(scorer.total, dtype=torch.float64)

    def record(i, hin, hout):  # a block's input may still sit on the previous block's device
        cos = F.cosine_similarity(hin.to(hout.device).float(), hout.float(), dim=-1)
        sums[i] += float((1 - cos).sum(dtype=torch.float64))
        counts[i] += cos.numel()

    _dense_pass(scorer, record, progress, "block influence")
    bi = (sums / counts).tolist()
    scores = {b: bi[b] for b in allowed}
    return _lowest_scores("block-influence", scores, num_remove, scorer, early_barrier, latter_barrier,
                          "block influence: 1 - cosine(input, output), mean over all calibration tokens")


def angular_distance(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                     batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Gromov et al.: remove the run l..l+n-1 minimising arccos(cos(h_l, h_{l+n}))/pi at the last token."""
    scorer, _ = _scorer(model, windows, num_remove, early_barrier, latter_barrier, batch_size)
    total = scorer.total
    # h[l]: input of block l at each window's last token; h[total]: output of the last block.
    h: list[list[torch.Tensor]] = [[] for _ in range(total + 1)]

    def record(i, hin, hout):
        h[i].append(hin[:, -1].float().cpu())
        if i == total - 1:
            h[total].append(hout[:, -1].float().cpu())

    _dense_pass(scorer, record, progress, "angular distance")
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
        settings=_settings(early_barrier, latter_barrier, scorer,
                           "angular distance arccos(cos(h_l, h_{l+n}))/pi at the last token, mean over windows; "
                           "round n scores each start block l of an n-block run"),
        by_count=by_count,
    )


def oneshot_ppl(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Shortened LLaMA one-shot PPL: total calibration NLL with each block alone bypassed; drop the k lowest."""
    scorer, allowed = _scorer(model, windows, num_remove, early_barrier, latter_barrier, batch_size)
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
    return _lowest_scores("oneshot-ppl", scores, num_remove, scorer, early_barrier, latter_barrier,
                          "total NLL (nats) over the calibration tokens with the block alone bypassed")


def last_blocks(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Remove the deepest removable blocks, going up from the last one before the latter barrier."""
    total = len(find_blocks(model).blocks)
    allowed = _allowed(total, num_remove, early_barrier, latter_barrier)
    order = allowed[::-1][:num_remove]
    return SearchResult(
        method="last",
        num_blocks=total,
        order=order,
        settings=_settings(early_barrier, latter_barrier, None, "none: the deepest removable blocks first"),
    )


def random_blocks(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                  batch_size: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Remove a seeded random permutation of the removable blocks."""
    total = len(find_blocks(model).blocks)
    allowed = _allowed(total, num_remove, early_barrier, latter_barrier)
    perm = torch.randperm(len(allowed), generator=torch.Generator().manual_seed(seed)).tolist()
    order = [allowed[p] for p in perm][:num_remove]
    return SearchResult(
        method="random",
        num_blocks=total,
        order=order,
        settings=_settings(early_barrier, latter_barrier, None, "none: a random permutation", seed=seed),
    )


BASELINES: dict[str, Callable[..., SearchResult]] = {
    "block-influence": block_influence,
    "angular": angular_distance,
    "oneshot-ppl": oneshot_ppl,
    "last": last_blocks,
    "random": random_blocks,
}
