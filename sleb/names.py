"""How pruned variants are named, in one place: `<base>-<method>-<percent>[-healed]` (the zoo and the demo)."""

from __future__ import annotations

from .criteria import method_slug


def percent_label(ratio: float) -> str:
    """10 for 0.1, 12p5 for 0.125: the ratio as a name-safe percentage."""
    return f"{ratio * 100:.6g}".replace(".", "p")


def variant_name(base: str, method: str, ratio: float, healed: bool = False) -> str:
    """The name of a variant, e.g. `smollm2-135m-instruct-sleb-20` (`...-sleb-20-healed` when healed); a refined
    method by its slug, `...-sleb-refine-10` (`sleb.criteria.method_from_slug` reads it back)."""
    return f"{base}-{method_slug(method)}-{percent_label(ratio)}" + ("-healed" if healed else "")
