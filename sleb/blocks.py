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
        self._tuple_output = False
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
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index in self.skip:
                return (hidden,) if self._tuple_output else hidden
            if index in self.replay:
                out = self.replay[index]
                result = (out,) if self._tuple_output else out
            else:
                result = original(*args, **kwargs)
                self._tuple_output = isinstance(result, tuple)
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
