"""What every engine offers: streamed generation from token ids, token counting, perplexity on token ids.

An engine is one model ready to run (dense, or one pruned variant), on one runtime. The
prompt is always token ids made by the Hugging Face tokenizer (with its chat template), so
two engines given the same ids answer the same prompt, and their perplexities are on the
same tokens.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class GenSettings:
    """Decoding settings, the same for both sides: greedy when temperature is 0, else seeded sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 0


class Engine(ABC):
    """One runnable model. `lock` serializes its runs (a model or a llama.cpp context is not shared)."""

    name: str = ""
    lock: threading.Lock

    @abstractmethod
    def generate(self, ids: Sequence[int], settings: GenSettings, stop: threading.Event,
                 emit: Callable[[list[int]], None]) -> None:
        """Generate after the prompt `ids`, calling `emit(new ids)` as tokens arrive.

        Stops at an end-of-sequence token, after `settings.max_new_tokens`, or once `stop` is
        set. The caller holds `lock`.
        """

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` (no special tokens added) in this engine's own tokenizer."""

    @abstractmethod
    def perplexity(self, windows: torch.Tensor) -> dict:
        """Perplexity over token-id windows `[n, seqlen]` (sleb's protocol: every position but the first of each
        window is predicted); the caller holds `lock`."""
