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

from .calibration import Calibration
from .criteria import CRITERIA, REFINE_SUFFIX
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
        records[str(k)] = {"seed_method": chosen, "seed_scores": seed_scores, "state_file": state.path.name, **record}
        by_count[k] = record["removed"]
        log.info("%d blocks: refined %s's %s to %s (%s %.4f -> %s)", k, chosen, candidates[chosen],
                 record["removed"], spec.objective, record.get("seed_score") or float("nan"), record["score"])
    settings = {**result.settings, "refine": records, "refine_seeds": spec.seeds, "refine_objective": spec.objective,
                "refine_budget": spec.budget, "seed_method": result.method, "nested": False,
                "refine_seconds": round(time.perf_counter() - start, 3)}
    return SearchResult(method=result.method + REFINE_SUFFIX, num_blocks=result.num_blocks,
                        order=list(by_count[max(counts)]), rounds=[], settings=settings, by_count=by_count)
