"""Block-removal criteria, one module each, and the registry that every other part of sleb reads.

    from sleb.criteria import CRITERIA, get_criterion
    get_criterion("angular").label   # 'angular distance (Gromov et al.)'

Adding a criterion is one module here that defines `CRITERION = Criterion(...)` (see
`registry.Criterion`), plus its tests; it is found by scanning this package.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import SlebError
from .registry import Criterion, per_block_scores

REFINE_SUFFIX = "+refine"


def _discover() -> dict[str, Criterion]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        criterion = getattr(module, "CRITERION", None)
        if isinstance(criterion, Criterion):
            found.append(criterion)
    return {c.name: c for c in sorted(found, key=lambda c: (c.rank, c.name))}


CRITERIA: dict[str, Criterion] = _discover()
METHODS: tuple[str, ...] = tuple(CRITERIA)

# The default pick: SLEB's greedy set, then swap refinement from the best (on the calibration NLL) of it and
# every cheap criterion's set. Measured best on held-out text at 10%, 20% and 30% (docs/search.md); `sleb`
# alone stays the paper's exact greedy.
DEFAULT_METHOD = "sleb" + REFINE_SUFFIX
PICK_METHODS: tuple[str, ...] = (DEFAULT_METHOD, *METHODS)
PICK_LABELS = {DEFAULT_METHOD: "SLEB + swap refinement (default)"}


def base_method(method: str) -> str:
    """The criterion a (possibly refined) result's method comes from: 'sleb+refine' -> 'sleb'."""
    return method.split("+", 1)[0]


def refine_seeds(method: str) -> str | None:
    """The refinement a method name asks for: 'all' for '<criterion>+refine' (the default pick), else None."""
    return "all" if method.endswith(REFINE_SUFFIX) and base_method(method) + REFINE_SUFFIX == method else None


def method_label(method: str) -> str:
    """What the app and the cards call a method."""
    return PICK_LABELS.get(method) or get_criterion(method).label + (" + swap refinement" if "+" in method else "")


def method_slug(method: str) -> str:
    """A method name fit for folder and Hub repo names: 'sleb+refine' -> 'sleb-refine'."""
    return method.replace("+", "-")


def method_from_slug(slug: str) -> str:
    """The method a folder or repo name's slug stands for: 'sleb-refine' -> 'sleb+refine'; a method is its own."""
    base, _, tail = slug.rpartition("-")
    return base + REFINE_SUFFIX if base in CRITERIA and "+" + tail == REFINE_SUFFIX else slug


def method_forwards(method: str, total: int, k: int, done: int = 0, early: int = 1, latter: int = 1) -> float:
    """Estimated cost of `method` for `k` of `total` blocks, in full forward passes over the calibration tokens,
    with `done` of its criterion's rounds saved (the registry's `Criterion.forwards`). A refined method adds its
    seeds (every cheap criterion, then one pass per seed set to score it) and one certifying pass over the best
    seed's swaps, taken as SLEB's whole greedy (0.72-0.95 x its block forwards on SmolLM2, docs/search.md);
    each accepted swap costs about one pass more."""
    criterion = get_criterion(method)
    cost = criterion.forwards(total, k, done, early, latter)
    if refine_seeds(method) is None:
        return cost
    seeds = [c for c in CRITERIA.values() if c.cheap and not c.seeded and c.name != criterion.name]
    cost += sum(c.forwards(total, k, 0, early, latter) for c in seeds) + len(seeds) + 1
    return cost + CRITERIA["sleb"].forwards(total, k, 0, early, latter)


def get_criterion(method: str) -> Criterion:
    """The registry entry of `method` (or of the criterion a refined method started from); a clear error if none."""
    criterion = CRITERIA.get(base_method(method))
    if criterion is None:
        raise SlebError(f"Unknown method {method!r}; choose one of: {', '.join(METHODS)}.")
    return criterion


def is_nested(method: str) -> bool:
    """Whether a result of `method` is one removal order whose prefixes are the sets (refined sets never are;
    a manual set is one set, not an order)."""
    return "+" not in method and method in CRITERIA and CRITERIA[method].nested


__all__ = ["CRITERIA", "DEFAULT_METHOD", "METHODS", "PICK_LABELS", "PICK_METHODS", "REFINE_SUFFIX", "Criterion",
           "base_method", "get_criterion", "is_nested", "method_forwards", "method_from_slug",
           "method_label", "method_slug", "per_block_scores",
           "refine_seeds"]
