"""Healing after block removal: a training-free linear fold, and distillation from the dense model.

    from sleb.healing import HealSpec, heal
    heal("out/smollm2-sleb-20", "out/smollm2-sleb-20-healed", HealSpec(methods=("linear", "distill")))

Both steps change only existing weights, so the result is a standard checkpoint of the
same architecture as the pruned one. See docs/healing.md.
"""

from .cache import cached_heal, cached_heal_dir
from .distill import DistillSpec, distill
from .linear import fit_linear, residual_writer
from .match import check_match
from .methods import HEAL_METHODS
from .run import HealSpec, heal, heal_model, parse_methods
from .text import HealData, heal_data

__all__ = [
    "DistillSpec", "HEAL_METHODS", "HealData", "HealSpec", "cached_heal", "cached_heal_dir", "check_match", "distill",
    "fit_linear", "heal",
    "heal_data", "heal_model", "parse_methods", "residual_writer",
]
