"""From a criterion's result to the sets that are pruned: swap refinement per block count.

`refine_result` refines the set of each block count asked for (`sleb.refine`), seeded from
the method's own set or, with `RefineSpec(seeds="all")`, from the best on the objective of
the method's and every cheap criterion's sets. A refined result holds one set per count
(`by_count`): refined sets are not nested. Each count's refinement keeps its accepted swaps
in a state file of its own and resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import torch

from .calibration import Calibration
from .criteria import CRITERIA, REFINE_SUFFIX
from .errors import SlebError
from .refine import RefineSpec, fast_refine, reference_refine, score_sets
from .search import SearchResult, SearchState

log = logging.getLogger(__name__)


def seed_sets(model, calibration: Calibration, result: SearchResult, counts: list[int], spec: RefineSpec, *,
              early_barrier: int, latter_barrier: int, batch_size, seed: int, progress: bool) -> dict[int, dict]:
    """Per count, the candidate seeds by criterion name: the method's own, and with `all` every cheap criterion's."""
    from .prune import find_removal

    results = {result.method: result}
    if spec.seeds == "all":
        for name, criterion in CRITERIA.items():
            if criterion.cheap and not criterion.seeded and name not in results:
                results[name] = find_removal(model, calibration, max(counts), name, early_barrier=early_barrier,
                                             latter_barrier=latter_barrier, batch_size=batch_size, seed=seed,
                                             progress=progress)
    return {k: {name: r.removed(k) for name, r in results.items()} for k in counts}


def refine_key(base_key: str, spec: RefineSpec, seed: list[int]) -> str:
    parts = {"search": base_key, "objective": spec.objective, "seed": sorted(seed)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def refine_result(model, calibration: Calibration, result: SearchResult, counts: list[int], spec: RefineSpec, *,
                  base_key: str, state_dir, early_barrier: int = 1, latter_barrier: int = 1, batch_size=None,
                  seed: int = 0, progress: bool = True, reference: bool = False) -> SearchResult:
    """Refine `result`'s set at every count; the refined result's `settings["refine"]` records each count's path."""
    spec.check()
    start = time.perf_counter()
    seeds = seed_sets(model, calibration, result, counts, spec, early_barrier=early_barrier,
                      latter_barrier=latter_barrier, batch_size=batch_size, seed=seed, progress=progress)
    refine = reference_refine if reference else fast_refine
    by_count, records = {}, {}
    for k in counts:
        candidates = seeds[k]
        seed_scores = {}
        chosen = result.method
        if len({tuple(sorted(s)) for s in candidates.values()}) > 1 and spec.budget != 0:
            seed_scores = score_sets(model, calibration.windows, candidates, spec.objective, batch_size)
            chosen = min(seed_scores, key=lambda n: (seed_scores[n], n != result.method, n))
        key = refine_key(base_key, spec, candidates[chosen])
        state = SearchState(state_dir / f"refine-{key}.json", key)
        record = refine(model, calibration.windows, candidates[chosen], early_barrier, latter_barrier, spec,
                        batch_size=batch_size, state=state, progress=progress)
        records[str(k)] = {"seed_method": chosen, "seed_scores": seed_scores, "state_file": state.path.name,
                           "seed_sets": {name: sorted(blocks) for name, blocks in candidates.items()}, **record}
        by_count[k] = record["removed"]
        log.info("%d blocks: refined %s's %s to %s (%s %.4f -> %s)", k, chosen, candidates[chosen],
                 record["removed"], spec.objective, record.get("seed_score") or float("nan"), record["score"])
    settings = {**result.settings, "refine": records, "refine_seeds": spec.seeds, "refine_objective": spec.objective,
                "refine_budget": spec.budget, "seed_method": result.method, "seed_order": list(result.order),
                "nested": False, "refine_seconds": round(time.perf_counter() - start, 3)}
    # `rounds` stay the seed criterion's (SLEB's greedy rounds, say): the search that ran; `by_count` is the pick
    return SearchResult(method=result.method + REFINE_SUFFIX, num_blocks=result.num_blocks,
                        order=list(by_count[max(counts)]), rounds=list(result.rounds or []), settings=settings,
                        by_count=by_count)


VALIDATED_SUFFIX = "+validated"


@dataclass(frozen=True)
class ValidateSpec:
    """Hold out `fraction` of the calibration windows (at least one); with `generated`, also validate on text
    the dense model writes itself (as many tokens as the held-out windows), so the pick must generalise."""

    fraction: float = 0.25
    generated: bool = False

    def check(self, windows: int) -> int:
        """The number of held-out windows; a clear error when the calibration is too small to split."""
        if not 0 < self.fraction < 1:
            raise SlebError(f"The validation share must lie strictly between 0 and 1, got {self.fraction}.")
        held = max(1, round(self.fraction * windows))
        if held >= windows:
            raise SlebError(f"Cannot hold out {held} of {windows} calibration windows for validation and still "
                            "search on the rest; use more calibration windows or a smaller share.")
        return held


def split_calibration(calibration: Calibration, spec: ValidateSpec) -> tuple[Calibration, torch.Tensor]:
    """The search's part (the first windows, with its own fingerprint) and the held-out windows (the last)."""
    held = spec.check(calibration.windows.shape[0])
    search, heldout = calibration.windows[:-held], calibration.windows[-held:]
    digest = hashlib.sha256(f"{tuple(search.shape)}".encode())
    digest.update(search.numpy().tobytes())
    info = {**calibration.info, "num_windows": int(search.shape[0]), "num_tokens": int(search.numel()),
            "fingerprint": digest.hexdigest()[:16], "validation_windows": held}
    return Calibration(windows=search, info=info), heldout


def generated_windows(model, tokenizer, tokens: int, seqlen: int, seed: int = 0,
                      progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Windows of text the dense model writes itself (`sleb.healing.generated`, cached), `tokens` at most."""
    from .healing.generated import GenerateSpec, cached_generated_texts

    spec = GenerateSpec(tokens=max(tokens, seqlen), batch=8, seed=seed)
    texts, info = cached_generated_texts(model, tokenizer, spec, progress)
    ids = tokenizer("\n\n".join(texts), return_tensors="pt", add_special_tokens=False).input_ids[0]
    count = min(max(1, tokens // seqlen), ids.numel() // seqlen)
    if count < 1:
        raise SlebError(f"The generated text holds {ids.numel()} tokens, fewer than one window of {seqlen}.")
    return ids[: count * seqlen].view(count, seqlen), info


def validation_candidates(model, calibration: Calibration, result: SearchResult, refined: SearchResult | None,
                          k: int, *, early_barrier: int, latter_barrier: int, batch_size, seed: int,
                          progress: bool) -> dict[str, list[int]]:
    """The sets the pick chooses among for k blocks: the method's, the refined one, every data-reading criterion's."""
    from .prune import find_removal

    sets = {result.method: result.removed(k)}
    if refined is not None:
        sets[refined.method] = refined.removed(k)
    for name, criterion in CRITERIA.items():
        if criterion.cheap and not criterion.seeded and name not in sets:
            sets[name] = find_removal(model, calibration, k, name, early_barrier=early_barrier,
                                      latter_barrier=latter_barrier, batch_size=batch_size, seed=seed,
                                      progress=progress).removed(k)
    return sets


def validated_choice(model, domains: dict[str, torch.Tensor], candidates: dict[str, list[int]],
                     batch_size=None) -> dict:
    """Score each candidate set on each validation domain (NLL per token); pick the lowest mean over domains."""
    per_domain = {}
    for domain, windows in domains.items():
        tokens = windows.shape[0] * (windows.shape[1] - 1)
        totals = score_sets(model, windows, candidates, "nll", batch_size)
        per_domain[domain] = {name: value / tokens for name, value in totals.items()}
    table = {name: {"removed": sorted(blocks), "nll": {d: per_domain[d][name] for d in domains},
                    "mean": sum(per_domain[d][name] for d in domains) / len(domains)}
             for name, blocks in candidates.items()}
    ranked = sorted(table, key=lambda n: (table[n]["mean"], n))
    pick = ranked[0]
    return {"domains": {d: int(w.numel()) for d, w in domains.items()}, "candidates": table, "pick": pick,
            "runner_up": ranked[1] if len(ranked) > 1 else None,
            "margin": table[ranked[1]]["mean"] - table[pick]["mean"] if len(ranked) > 1 else None}


def validated_result(model, tokenizer, calibration: Calibration, heldout: torch.Tensor, result: SearchResult,
                     refined: SearchResult | None, counts: list[int], spec: ValidateSpec, *, early_barrier: int = 1,
                     latter_barrier: int = 1, batch_size=None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Per count, the candidate of lowest validation NLL (mean over the domains); the record says which, by how much."""
    domains = {calibration.info.get("data", "calibration"): heldout}
    if spec.generated:
        domains["generated"], _ = generated_windows(model, tokenizer, heldout.numel(), heldout.shape[1], seed, progress)
    by_count, records = {}, {}
    for k in counts:
        candidates = validation_candidates(model, calibration, result, refined, k, early_barrier=early_barrier,
                                           latter_barrier=latter_barrier, batch_size=batch_size, seed=seed,
                                           progress=progress)
        records[str(k)] = validated_choice(model, domains, candidates, batch_size)
        by_count[k] = records[str(k)]["candidates"][records[str(k)]["pick"]]["removed"]
        log.info("%d blocks: validation picks %s's %s (%.4f nats/token below %s)", k, records[str(k)]["pick"],
                 by_count[k], records[str(k)]["margin"] or 0.0, records[str(k)]["runner_up"])
    base = refined or result
    settings = {**base.settings, "validation": records, "validation_share": spec.fraction, "nested": False}
    return SearchResult(method=result.method + VALIDATED_SUFFIX, num_blocks=result.num_blocks,
                        order=list(by_count[max(counts)]), rounds=[], settings=settings, by_count=by_count)
