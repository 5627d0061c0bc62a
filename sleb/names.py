"""How pruned variants are named, in one place: `<base>-<method slug>-<percent>[-healed]` (the zoo and the demo)."""

from __future__ import annotations

from .criteria import REFINE_SUFFIX, method_slug


def percent_label(ratio: float) -> str:
    """10 for 0.1, 12p5 for 0.125: the ratio as a name-safe percentage."""
    return f"{ratio * 100:.6g}".replace(".", "p")


def variant_name(base: str, method: str, ratio: float, healed: bool = False) -> str:
    """The name of a variant, e.g. `smollm2-135m-instruct-sleb-refine-20` for 'sleb+refine' (a Hub repo name has no
    '+'), `...-sleb-20` for the paper's greedy, `...-20-healed` when healed."""
    return f"{base}-{method_slug(method)}-{percent_label(ratio)}" + ("-healed" if healed else "")


def pick_method(method: str, refine: str | None = None) -> str:
    """The method a pick is recorded under (`sleb.json`'s `method`) for a zoo base's `method` and `refine` settings:
    'sleb+refine' -> 'sleb+refine', 'sleb' -> 'sleb', 'sleb' with refine 'seed' or 'all' -> 'sleb+refine'."""
    from .prune import resolve_method
    from .refine import RefineSpec

    name, spec = resolve_method(method, RefineSpec(seeds=refine) if refine else None)
    return name + REFINE_SUFFIX if spec is not None else name
