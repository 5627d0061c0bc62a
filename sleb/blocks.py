"""Find a decoder-only model's transformer blocks from its structure, and bypass them by flag.

`find_blocks` looks for the one `nn.ModuleList` whose length equals the config's
layer count and whose entries share one class; it never looks at the model's name.
`BlockSwitch` temporarily patches each block's `forward` so a block can run, be
bypassed (its input passes straight on), or replay an output recorded earlier. One
model stays in memory; nothing is copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SlebError

log = logging.getLogger(__name__)


def text_config(model_or_config):
    """The config that describes the decoder stack (the text config of multimodal configs)."""
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_layers(model_or_config) -> int:
    config = text_config(model_or_config)
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise SlebError(f"{type(config).__name__} has no integer `num_hidden_layers`; cannot count the blocks.")
    return n


@dataclass
class BlockLayout:
    """Where the blocks live: `owner.<attr>` is the ModuleList, `path` its dotted name."""

    owner: nn.Module
    attr: str
    path: str

    @property
    def blocks(self) -> nn.ModuleList:
        return getattr(self.owner, self.attr)

    @property
    def block_class(self) -> str:
        return type(self.blocks[0]).__name__ if len(self.blocks) else "?"


def find_blocks(model: nn.Module) -> BlockLayout:
    """Locate the decoder's block list from the module tree and `config.num_hidden_layers`."""
    n = num_layers(model)
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    matches = [
        (name, mod)
        for name, mod in lists
        if len(mod) == n and n > 0 and len({type(b) for b in mod}) == 1
    ]
    if not matches:
        seen = ", ".join(f"{name or '<root>'} (len {len(mod)})" for name, mod in lists) or "none"
        raise SlebError(
            f"Could not find the transformer blocks of {type(model).__name__}: looked for an "
            f"nn.ModuleList of {n} modules of one class (config.num_hidden_layers={n}); "
            f"ModuleLists found: {seen}."
        )
    name, _ = min(matches, key=lambda m: m[0].count("."))
    owner_path, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    return BlockLayout(owner=owner, attr=attr, path=name)


# Whether a block class returns a tuple (GPT-Neo, Falcon, BLOOM) or a bare tensor, learnt per class.
_TUPLE_OUTPUT: dict[type, bool] = {}


def _returns_tuple(block_class: type, original: Callable, args, kwargs) -> bool:
    """Whether blocks of this class return a tuple; probed with one real call the first time it is asked.

    The probe runs without any KV cache, so a bypassed or replayed block never writes to one.
    """
    if block_class not in _TUPLE_OUTPUT:
        probe = {k: v for k, v in kwargs.items() if not _is_cache(v)}
        if "use_cache" in probe:
            probe["use_cache"] = False
        args = tuple(None if _is_cache(a) else a for a in args)
        with torch.no_grad():
            _TUPLE_OUTPUT[block_class] = isinstance(original(*args, **probe), tuple)
        log.debug("%s blocks return %s", block_class.__name__, "tuples" if _TUPLE_OUTPUT[block_class] else "tensors")
    return _TUPLE_OUTPUT[block_class]


def _is_cache(value) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


def _hidden_of(output):
    return output[0] if isinstance(output, tuple) else output


class BlockSwitch:
    """Per-block run / bypass / replay control over a model's blocks, by patching `forward`.

    Use as a context manager; on exit every block's original `forward` is restored.

    - `skip`: indices whose input passes straight to the next block.
    - `replay`: index -> hidden output to return without computing (prefix reuse).
    - `recorder`: called as `recorder(index, hidden_in, hidden_out)` for every block
      that runs or replays (not for skipped ones).
    - `forwards`: number of block forwards computed, counted per sequence in the batch.
    """

    def __init__(self, blocks: nn.ModuleList):
        self.blocks = blocks
        self.skip: set[int] = set()
        self.replay: dict[int, torch.Tensor] = {}
        self.recorder: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
        self.forwards = 0
        self._saved: list[tuple[nn.Module, object]] = []

    def __enter__(self) -> BlockSwitch:
        for index, block in enumerate(self.blocks):
            self._saved.append((block, block.__dict__.get("forward")))
            block.forward = self._make_forward(index, block.forward)
        return self

    def __exit__(self, *exc) -> None:
        for block, previous in self._saved:
            if previous is None:
                del block.forward
            else:
                block.forward = previous
        self._saved.clear()

    def _make_forward(self, index: int, original: Callable):
        block_class = type(self.blocks[index])

        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index in self.skip or index in self.replay:
                out = hidden if index in self.skip else self.replay[index]
                result = (out,) if _returns_tuple(block_class, original, args, kwargs) else out
                if index in self.skip:
                    return result
            else:
                result = original(*args, **kwargs)
                _TUPLE_OUTPUT[block_class] = isinstance(result, tuple)
                self.forwards += hidden.shape[0]
                out = _hidden_of(result)
            if self.recorder is not None:
                self.recorder(index, hidden, out)
            return result

        return forward

    @contextmanager
    def state(self, skip=(), replay=None, recorder=None):
        """Set skip / replay / recorder for the duration of a `with` block."""
        old = (self.skip, self.replay, self.recorder)
        self.skip, self.replay, self.recorder = set(skip), dict(replay or {}), recorder
        try:
            yield self
        finally:
            self.skip, self.replay, self.recorder = old
