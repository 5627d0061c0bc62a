"""Swap refinement: from a removal set, trade one removed block for one kept block while that helps.

Each pass scores every swap of the current set S (a removed block r back in, a kept block a
out) on the calibration windows and moves to the best one if it lowers the objective; it
stops at a swap-local optimum (no swap helps) or when the evaluation budget is spent. The
objective is SLEB's, the summed NLL of the calibration windows with the blocks bypassed
(`objective="kl"`: the summed KL divergence from the dense model's next-token distribution).

Two implementations follow the same path:

- `reference_refine`: the plain loop; every candidate is a full forward of every window
  with the model's own logits.
- `fast_refine`: per micro-batch one pass records every block's output under S; a swap
  (r, a) changes nothing below min(r, a), so those blocks replay. A candidate whose partial
  sum already exceeds S's complete score cannot improve and stops (the bound). A set scored
  before is not scored again when what is known of it (its score, or the partial sum at which
  it stopped) already rules it out.

Both write their accepted swaps to a `SearchState` file and resume from the last one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import SlebError
from .nll import check_head, chunked_nll, final_hidden, head_logits
from .search import SearchState, _Scorer, bounded_pass, default_batch_size

log = logging.getLogger(__name__)

OBJECTIVES = ("nll", "kl")
# A swap is accepted only if it lowers the objective by more than this share: rounding never makes a cycle.
MIN_GAIN = 1e-9


@dataclass(frozen=True)
class RefineSpec:
    """What `--refine` asks: the seeds (`seed`: the method's set; `all`: also every cheap criterion's set,
    refining the best of them), the objective, and at most `budget` candidate evaluations per set (None: no limit)."""

    seeds: str = "seed"
    objective: str = "nll"
    budget: int | None = None

    def check(self) -> None:
        if self.seeds not in ("seed", "all"):
            raise SlebError(f"--refine takes 'seed' or 'all', got {self.seeds!r}.")
        if self.objective not in OBJECTIVES:
            raise SlebError(f"Unknown refinement objective {self.objective!r}; use one of: {', '.join(OBJECTIVES)}.")
        if self.budget is not None and self.budget < 0:
            raise SlebError(f"The refinement budget must be 0 or more evaluations, got {self.budget}.")


def check_seed(seed: list[int], total: int, early_barrier: int, latter_barrier: int) -> list[int]:
    """The seed as sorted distinct indices, or a clear error naming the blocks out of range or in a barrier."""
    bad = sorted({b for b in seed if not 0 <= b < total})
    if bad:
        raise SlebError(f"Seed blocks {bad} are out of range for a model of {total} blocks (0-{total - 1}).")
    fixed = sorted({b for b in seed if b < early_barrier or b >= total - latter_barrier})
    if fixed:
        raise SlebError(f"Seed blocks {fixed} lie inside the barriers (the first {early_barrier} and last "
                        f"{latter_barrier} blocks are never removed).")
    if len(set(seed)) != len(seed) or not seed:
        raise SlebError(f"A seed must be a non-empty set of distinct blocks, got {seed}.")
    return sorted(seed)


def swaps(removed: list[int], total: int, early_barrier: int, latter_barrier: int) -> list[tuple[int, int]]:
    """Every (block back in, block out) pair, nearest pairs first (the likeliest gains, spent first on a budget)."""
    kept = [b for b in range(early_barrier, total - latter_barrier) if b not in removed]
    return sorted(((r, a) for r in removed for a in kept), key=lambda p: (abs(p[0] - p[1]), p))


def _swap(removed, pair) -> frozenset:
    r, a = pair
    return frozenset(removed) - {r} | {a}


class _Objective:
    """The per-micro-batch objective of a skip set, fast (replay, chunked head) or plain (the model's own logits)."""

    def __init__(self, scorer: _Scorer, kind: str):
        self.scorer, self.kind = scorer, kind
        self.dense: list[torch.Tensor] = []
        if kind == "kl":  # the dense model's final hidden states: its logits come from the same head
            with scorer.switch.state():
                self.dense = [final_hidden(scorer.model, b) for b in scorer.batches]

    def fast(self, index: int, skip, replay=None) -> float:
        s = self.scorer
        batch = s.batches[index]
        with s.switch.state(skip=skip, replay=replay):
            hidden = final_hidden(s.model, batch)
        if self.kind == "nll":
            return float(chunked_nll(s.model, hidden, batch).sum())
        return chunked_kl(s.model, self.dense[index], hidden)

    @torch.inference_mode()
    def plain(self, index: int, skip) -> float:
        s = self.scorer
        batch = s.batches[index]
        with s.switch.state(skip=skip):
            logits = s.model(input_ids=batch, use_cache=False).logits.float()
        if self.kind == "kl":
            with s.switch.state():
                dense = s.model(input_ids=batch, use_cache=False).logits.float()
            return float(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(dense.to(logits.device), -1),
                                  log_target=True, reduction="sum"))
        targets = batch[:, 1:].to(logits.device)
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                     reduction="sum"))

    def total(self, skip) -> float:
        return sum(self.fast(i, skip) for i in range(len(self.scorer.batches)))


@torch.inference_mode()
def chunked_kl(model, dense_hidden: torch.Tensor, hidden: torch.Tensor) -> float:
    """Summed KL(dense || pruned) of the next-token distributions at every position, head applied in chunks."""
    from .nll import CHUNK_ELEMENTS, _head

    vocab = _head(model).weight.shape[0]
    batch, length, _ = hidden.shape
    per_chunk = max(1, CHUNK_ELEMENTS // (vocab * batch))
    total = 0.0
    for start in range(0, length, per_chunk):
        p = F.log_softmax(head_logits(model, hidden[:, start:start + per_chunk]).float(), -1)
        q = F.log_softmax(head_logits(model, dense_hidden[:, start:start + per_chunk]).float(), -1)
        total += float(F.kl_div(p, q.to(p.device), log_target=True, reduction="sum"))
    return total


def _fast_pass(obj: _Objective, removed: list[int], pairs, current: float, bar) -> tuple[dict, dict]:
    """Score `pairs` with replay and the bound: (complete scores, partial sums of the candidates stopped)."""
    return bounded_pass(obj.scorer, set(removed), list(pairs), lambda p: (_swap(removed, p), min(p)), obj.fast,
                        current, bar)


def _plain_pass(obj: _Objective, removed: list[int], pairs, current: float, bar) -> tuple[dict, dict]:
    scores = {}
    for p in pairs:
        scores[p] = sum(obj.plain(i, _swap(removed, p)) for i in range(len(obj.scorer.batches)))
        bar.update(len(obj.scorer.batches))
    return scores, {}


def _candidates(removed, total, early, latter, known, current, limit):
    """Swaps still worth scoring (what is known of a set may already rule it out), and known winners reused."""
    threshold = current - MIN_GAIN * abs(current)
    todo, reused = [], {}
    for p in swaps(removed, total, early, latter):
        value, exact = known.get(_swap(removed, p), (None, False))
        if value is not None and exact and value < threshold:
            reused[p] = value
        elif value is None or value < threshold:  # unknown, or a lower bound that does not rule it out
            todo.append(p)
    return (todo if limit is None else todo[:limit]), reused


def _pass(obj, removed, current, known, spec, used, fast, progress) -> tuple[tuple[int, int] | None, float, int]:
    """One pass over the swaps of `removed`: the best improving swap (or None), its score, evaluations used."""
    s = obj.scorer
    limit = None if spec.budget is None else spec.budget - used
    if fast:
        pairs, reused = _candidates(removed, s.total, *obj.barriers, known, current, limit)
    else:
        pairs = swaps(removed, s.total, *obj.barriers)
        pairs, reused = (pairs if limit is None else pairs[:limit]), {}
    with tqdm(total=len(pairs) * len(s.batches), desc=f"swaps of {removed}", unit="batch", leave=False,
              disable=not progress) as bar:
        scores, dropped = (_fast_pass if fast else _plain_pass)(obj, removed, pairs, current, bar)
    for p, value in scores.items():
        known[_swap(removed, p)] = (value, True)
    for p, value in dropped.items():  # stopped above the bound: a lower bound only
        known[_swap(removed, p)] = (value, False)
    scores.update(reused)
    threshold = current - MIN_GAIN * abs(current)
    best = min(scores, key=lambda p: (scores[p], p), default=None)
    if best is None or scores[best] >= threshold:
        return None, current, len(pairs)
    return best, scores[best], len(pairs)


def _run(model, windows, seed, early_barrier, latter_barrier, spec, batch_size, state, progress, fast,
         memo=None) -> dict:
    spec.check()
    scorer = _Scorer(model, windows, batch_size or default_batch_size(*windows.shape))
    removed = check_seed(list(seed), scorer.total, early_barrier, latter_barrier)
    record = {"objective": spec.objective, "seed": removed, "budget": spec.budget,
              "implementation": "fast" if fast else "reference", "swaps": [], "evaluations": 0}
    if spec.budget == 0:
        log.info("Refinement budget 0: nothing refined, the seed %s is kept.", removed)
        return {**record, "removed": removed, "score": None, "local_optimum": None,
                "note": "budget 0: refinement skipped, the seed kept"}
    check_head(model, windows)
    steps = state.load() if state else []
    was_training, start = model.training, time.perf_counter()
    model.eval()
    try:
        with scorer.switch:
            obj = _Objective(scorer, spec.objective)
            obj.barriers = (early_barrier, latter_barrier)
            if steps and steps[-1].get("done") == "budget":  # a larger budget continues where the last stopped
                del steps[-1]["done"]
            if not steps:
                steps = [{"removed": removed, "score": obj.total(set(removed)), "evaluations": 1}]
                if state:
                    state.save(steps)
            elif steps[0]["removed"] != removed:
                raise SlebError(f"Refinement state {state.path} starts from {steps[0]['removed']}, not {removed}; "
                                "delete it or choose another state file.")
            else:
                log.info("Resuming the refinement after %d accepted swaps (%s)", len(steps) - 1, state.path)
            _climb(obj, steps, spec, state, fast, progress, {} if memo is None else memo)
    finally:
        model.train(was_training)
    last = steps[-1]
    return {**record, "seed_score": steps[0]["score"], "removed": sorted(last["removed"]), "score": last["score"],
            "swaps": [{k: v for k, v in s.items() if k != "done"} for s in steps[1:] if "in" in s],
            "evaluations": sum(s.get("evaluations", 0) for s in steps), "local_optimum": last.get("done") == "optimum",
            "block_forwards": sum(s.get("block_forwards", 0) + s.get("final_pass", {}).get("block_forwards", 0)
                                  for s in steps),
            "pass_seconds": sum(s.get("seconds", 0) + s.get("final_pass", {}).get("seconds", 0) for s in steps),
            "seconds": round(time.perf_counter() - start, 3)}


def _climb(obj: _Objective, steps: list[dict], spec: RefineSpec, state, fast: bool, progress: bool,
           known: dict[frozenset, tuple[float, bool]]) -> None:
    """Accept best swaps until none helps or the budget is spent; one step recorded per accepted swap.

    `known[set]` is (score, exact) or (lower bound, False) of every set scored so far."""
    while not steps[-1].get("done"):
        used = sum(s.get("evaluations", 0) for s in steps)
        if spec.budget is not None and used >= spec.budget:
            steps[-1]["done"] = "budget"
            log.info("Refinement budget of %d evaluations spent at %s", spec.budget, steps[-1]["removed"])
            if state:
                state.save(steps)
            break
        removed, current = sorted(steps[-1]["removed"]), steps[-1]["score"]
        t0, forwards = time.perf_counter(), obj.scorer.switch.forwards
        best, score, count = _pass(obj, removed, current, known, spec, used, fast, progress)
        if best is None:
            steps[-1]["evaluations"] = steps[-1].get("evaluations", 0) + count
            steps[-1]["final_pass"] = {"seconds": round(time.perf_counter() - t0, 3),
                                       "block_forwards": obj.scorer.switch.forwards - forwards}
            exhausted = spec.budget is not None and used + count >= spec.budget
            steps[-1]["done"] = "budget" if exhausted else "optimum"
            log.info("Swap-local optimum %s (score %.4f)" if not exhausted else
                     "Budget spent at %s (score %.4f)", removed, current)
        else:
            r, a = best
            steps.append({"removed": sorted(_swap(removed, best)), "in": r, "out": a, "score": score,
                          "evaluations": count, "seconds": round(time.perf_counter() - t0, 3),
                          "block_forwards": obj.scorer.switch.forwards - forwards})
            log.info("Swap: block %d back in, block %d out: %.4f -> %.4f", r, a, current, score)
        if state:
            state.save(steps)


def fast_refine(model, windows: torch.Tensor, seed, early_barrier: int = 1, latter_barrier: int = 1,
                spec: RefineSpec = RefineSpec(), batch_size: int | None = None, state: SearchState | None = None,
                progress: bool = True, memo: dict | None = None) -> dict:
    """Swap refinement with replay, the bound and a memory of sets scored; the same path as `reference_refine`.

    `memo`: share it between refinements of the same model, windows, batch size and objective (other seeds),
    so a set one of them scored is not scored again."""
    return _run(model, windows, seed, early_barrier, latter_barrier, spec, batch_size, state, progress, fast=True,
                memo=memo)


def reference_refine(model, windows: torch.Tensor, seed, early_barrier: int = 1, latter_barrier: int = 1,
                     spec: RefineSpec = RefineSpec(), batch_size: int | None = None,
                     state: SearchState | None = None, progress: bool = True) -> dict:
    """The plain swap loop: every candidate a full forward with the model's own logits. Slow; the reference."""
    return _run(model, windows, seed, early_barrier, latter_barrier, spec, batch_size, state, progress, fast=False)


def score_sets(model, windows: torch.Tensor, sets: dict[str, list[int]], objective: str = "nll",
               batch_size: int | None = None) -> dict[str, float]:
    """The objective (summed over the windows) of each named removal set, with its blocks bypassed."""
    scorer = _Scorer(model, windows, batch_size or default_batch_size(*windows.shape))
    was_training = model.training
    model.eval()
    try:
        with scorer.switch:
            obj = _Objective(scorer, objective)
            return {name: obj.total(set(blocks)) for name, blocks in sets.items()}
    finally:
        model.train(was_training)
