"""The SLEB greedy search: remove one block per round, the one whose bypass costs least NLL.

Every round rescores the already-pruned model on the calibration windows. Two
implementations give the same order on the same data and dtype:

- `reference_search`: the plain loop: for each candidate, a full forward of every
  window with the candidate bypassed and the model's own logits.
- `fast_search`: prefix reuse (one pass per micro-batch records every block's output;
  each candidate then replays the blocks before it and computes only the blocks after
  it), bounded scoring (a candidate whose partial NLL already exceeds a complete
  score of this round cannot win and stops), and a chunked output head.

Both write their state after every round when given a `SearchState`, and resume from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .blocks import BlockSwitch, find_blocks
from .devices import to_input
from .errors import SlebError
from .nll import check_head, chunked_nll, final_hidden, full_nll

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """Which blocks a method removes. `order` is the removal order (original indices)."""

    method: str
    num_blocks: int
    order: list[int]
    rounds: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    by_count: dict[int, list[int]] | None = None  # for methods whose choice is not nested

    @property
    def max_remove(self) -> int:
        return max(self.by_count) if self.by_count else len(self.order)

    def covers(self, k: int) -> bool:
        """Whether this result holds a set for `k` blocks (a non-nested one holds only the counts it chose)."""
        return k == 0 or (k in self.by_count if self.by_count else 0 < k <= len(self.order))

    def removed(self, k: int) -> list[int]:
        """The blocks to remove for a budget of `k` blocks, in removal order."""
        if k < 0 or k > self.max_remove:
            raise SlebError(f"This {self.method} result covers up to {self.max_remove} blocks, not {k}.")
        if not self.covers(k):
            raise SlebError(f"This {self.method} result holds sets for {sorted(self.by_count)} blocks only, not {k}: "
                            "its sets are not nested; search again for this count.")
        if self.by_count:
            return list(self.by_count[k]) if k else []
        return self.order[:k]

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.by_count:
            out["by_count"] = {str(k): v for k, v in self.by_count.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SearchResult:
        data = dict(data)
        if data.get("by_count"):
            data["by_count"] = {int(k): v for k, v in data["by_count"].items()}
        return cls(**data)


def candidates(alive: list[int], early_barrier: int, latter_barrier: int) -> list[int]:
    """Still-alive blocks that may be removed: all but the first and last few."""
    return alive[early_barrier : len(alive) - latter_barrier]


def check_budget(total: int, num_remove: int, early_barrier: int, latter_barrier: int) -> None:
    if early_barrier < 0 or latter_barrier < 0:
        raise SlebError("Barriers must be zero or more.")
    room = total - early_barrier - latter_barrier
    if num_remove < 1:
        raise SlebError(f"Nothing to remove: asked for {num_remove} blocks.")
    if num_remove > room:
        raise SlebError(
            f"Cannot remove {num_remove} of {total} blocks: with early barrier {early_barrier} and latter "
            f"barrier {latter_barrier}, at most {room} can go."
        )


def default_batch_size(num_windows: int, seqlen: int) -> int:
    """Micro-batch: up to 4096 tokens, and at least 8 micro-batches when there are enough windows."""
    return max(1, min(4096 // seqlen, math.ceil(num_windows / 8)))


class SearchState:
    """A JSON file holding the rounds done so far; rewritten atomically after each round."""

    def __init__(self, path: str | os.PathLike, key: str):
        self.path = Path(path)
        self.key = key

    def load(self) -> list[dict]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise SlebError(f"Search state {self.path} is corrupt ({exc}); delete it to start over.") from exc
        if data.get("key") != self.key:
            raise SlebError(
                f"Search state {self.path} belongs to a different search (model, data or settings differ); "
                "delete it or choose another state file."
            )
        return data["rounds"]

    def save(self, rounds: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.key, "rounds": rounds}, indent=1))
        os.replace(tmp, self.path)


class _Scorer:
    """The model, its blocks under a BlockSwitch, and the calibration micro-batches."""

    def __init__(self, model, windows: torch.Tensor, batch_size: int):
        self.model = model
        self.blocks = find_blocks(model).blocks
        self.total = len(self.blocks)
        self.batches = [to_input(model, b) for b in windows.split(batch_size)]
        self.switch = BlockSwitch(self.blocks)

    def nll(self, batch: torch.Tensor, skip, replay=None) -> float:
        with self.switch.state(skip=skip, replay=replay):
            return float(chunked_nll(self.model, final_hidden(self.model, batch), batch).sum())

    def record_outputs(self, batch: torch.Tensor, skip) -> dict[int, torch.Tensor]:
        outputs: dict[int, torch.Tensor] = {}
        with self.switch.state(skip=skip, recorder=lambda i, _in, out: outputs.__setitem__(i, out)):
            final_hidden(self.model, batch)
        return outputs

    def cosine_seed(self, removed: set[int], cands: list[int]) -> int:
        """Round-0 guess at the best candidate: highest input/output cosine on the first batch."""
        sims: dict[int, float] = {}

        def record(i, hin, hout):  # a block's input may still sit on the previous block's device
            hin = hin.to(hout.device)
            sims[i] = float(torch.nn.functional.cosine_similarity(hin.float(), hout.float(), dim=-1).mean())

        with self.switch.state(skip=removed, recorder=record):
            final_hidden(self.model, self.batches[0])
        return max(cands, key=lambda c: sims[c])


def bounded_pass(scorer: _Scorer, skip: set[int], cands: list, change, score, bound: float, bar) -> tuple[dict, dict]:
    """Score every candidate on every micro-batch, replaying the blocks it leaves unchanged; drop a candidate
    once its partial sum exceeds `bound`. `change(c)` gives its skip set and its lowest changed block, and
    `score(batch_index, skip, replay)` one micro-batch's score. Returns (complete scores, partial sums dropped)."""
    partial = dict.fromkeys(cands, 0.0)
    active, dropped = list(cands), {}
    for index, batch in enumerate(scorer.batches):
        if not active:
            break
        outputs = scorer.record_outputs(batch, skip)
        for c in active:
            new_skip, lowest = change(c)
            partial[c] += score(index, new_skip, {i: out for i, out in outputs.items() if i < lowest})
            bar.update(1)
        still = [c for c in active if partial[c] <= bound]
        for c in set(active) - set(still):
            dropped[c] = partial[c]
            bar.update(len(scorer.batches) - index - 1)
        active = still
    return {c: partial[c] for c in active}, dropped


def _fast_round(scorer: _Scorer, removed: set[int], cands: list[int], hint: list[int], bar) -> dict:
    seed = next((c for c in hint if c in cands), None)
    if seed is None:
        seed = scorer.cosine_seed(removed, cands)
    scores = {seed: sum(scorer.nll(b, removed | {seed}) for b in scorer.batches)}
    bound = scores[seed]
    bar.update(len(scorer.batches))
    rest = [c for c in cands if c != seed]
    done, dropped = bounded_pass(scorer, removed, sorted(rest), lambda c: (removed | {c}, c),
                                 lambda i, skip, replay: scorer.nll(scorer.batches[i], skip, replay), bound, bar)
    scores.update(done)
    return {"scores": scores, "dropped": dropped}


def _reference_round(scorer: _Scorer, removed: set[int], cands: list[int], hint, bar) -> dict:
    scores = {}
    for c in cands:
        total = 0.0
        for batch in scorer.batches:
            with scorer.switch.state(skip=removed | {c}):
                total += float(full_nll(scorer.model, batch).sum())
            bar.update(1)
        scores[c] = total
    return {"scores": scores, "dropped": {}}


def _run(model, windows, num_remove, early_barrier, latter_barrier, batch_size, state, progress, fast) -> SearchResult:
    scorer = _Scorer(model, windows, batch_size or default_batch_size(*windows.shape))
    check_budget(scorer.total, num_remove, early_barrier, latter_barrier)
    check_head(model, windows)
    rounds = state.load() if state else []
    if rounds:
        log.info("Resuming the search after %d finished rounds (%s)", len(rounds), state.path)
    score_round = _fast_round if fast else _reference_round
    was_training = model.training
    model.eval()
    try:
        with scorer.switch, tqdm(total=num_remove, initial=min(len(rounds), num_remove), desc="SLEB rounds",
                                 disable=not progress) as rounds_bar:
            while len(rounds) < num_remove:
                removed = {r["removed"] for r in rounds}
                alive = [i for i in range(scorer.total) if i not in removed]
                cands = candidates(alive, early_barrier, latter_barrier)
                hint = [int(k) for k, _ in sorted(rounds[-1]["scores"].items(), key=lambda kv: kv[1])] if rounds else []
                start, forwards = time.perf_counter(), scorer.switch.forwards
                with tqdm(total=len(cands) * len(scorer.batches), desc=f"round {len(rounds) + 1} candidates",
                          unit="batch", leave=False, disable=not progress) as bar:
                    result = score_round(scorer, removed, cands, hint, bar)
                best = min(result["scores"], key=lambda c: (result["scores"][c], c))
                rounds.append({
                    "removed": best,
                    "score": result["scores"][best],
                    "scores": {str(c): s for c, s in sorted(result["scores"].items())},
                    "dropped": {str(c): s for c, s in sorted(result["dropped"].items())},
                    "seconds": round(time.perf_counter() - start, 3),
                    "block_forwards": scorer.switch.forwards - forwards,
                })
                log.info("Round %d: removed block %d (NLL %.2f)", len(rounds), best, result["scores"][best])
                if state:
                    state.save(rounds)
                rounds_bar.update(1)
    finally:
        model.train(was_training)
    rounds = rounds[:num_remove]
    return SearchResult(
        method="sleb",
        num_blocks=scorer.total,
        order=[r["removed"] for r in rounds],
        rounds=rounds,
        settings={
            "early_barrier": early_barrier,
            "latter_barrier": latter_barrier,
            "batch_size": len(scorer.batches[0]),
            "implementation": "fast" if fast else "reference",
            "score": "total NLL (nats) over the calibration tokens",
        },
    )


def fast_search(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1, latter_barrier: int = 1,
                batch_size: int | None = None, state: SearchState | None = None, progress: bool = True) -> SearchResult:
    """SLEB with prefix reuse, bounded scoring and a chunked head; same order as the reference."""
    return _run(model, windows, num_remove, early_barrier, latter_barrier, batch_size, state, progress, fast=True)


def reference_search(model, windows: torch.Tensor, num_remove: int, early_barrier: int = 1,
                     latter_barrier: int = 1, batch_size: int | None = None, state: SearchState | None = None,
                     progress: bool = True) -> SearchResult:
    """The plain SLEB loop: a full forward per candidate and window. Slow; kept as the reference."""
    return _run(model, windows, num_remove, early_barrier, latter_barrier, batch_size, state, progress, fast=False)
