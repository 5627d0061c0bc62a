"""The benchmark's prompt: seeded random ordinary tokens, clipped to the model's context."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import text_config
from ..errors import SlebError

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx", "seq_length")


def context_limit(model: nn.Module) -> int | None:
    """The model's maximum number of positions, from its config (None when it says none)."""
    config = text_config(model)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def special_ids(tokenizer, config) -> set[int]:
    """Token ids to keep out of the random prompt: the tokenizer's special tokens and the config's."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id"):
        value = getattr(config, key, None)
        ids.update(value if isinstance(value, (list, tuple)) else [value] if isinstance(value, int) else [])
    return ids


def random_prompt(vocab: int, exclude: set[int], batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """`[batch, length]` token ids drawn uniformly from `range(vocab)` minus `exclude`, seeded."""
    allowed = torch.tensor([i for i in range(vocab) if i not in exclude], dtype=torch.long)
    if not len(allowed):
        raise SlebError("No ordinary token ids are left to build a random prompt from.")
    generator = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(0, len(allowed), (batch, length), generator=generator)]
