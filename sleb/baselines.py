"""The criteria other than SLEB, under their former names (they live in `sleb.criteria`, one module each).

- `block_influence` (ShortGPT), `angular_distance` (Gromov et al.), `oneshot_ppl`
  (Shortened LLaMA), `last_blocks` and `random_blocks`: see each module's docstring.
"""

from __future__ import annotations

from collections.abc import Callable

from .criteria import CRITERIA
from .criteria.angular import angular_distance
from .criteria.block_influence import block_influence
from .criteria.last import last_blocks
from .criteria.oneshot_ppl import oneshot_ppl
from .criteria.random_blocks import random_blocks
from .search import SearchResult

BASELINES: dict[str, Callable[..., SearchResult]] = {name: c.run for name, c in CRITERIA.items() if name != "sleb"}

__all__ = ["BASELINES", "angular_distance", "block_influence", "last_blocks", "oneshot_ppl", "random_blocks"]
