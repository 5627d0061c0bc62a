"""Perplexity on non-overlapping windows of a text, the paper's protocol.

The text is tokenized once, cut into consecutive windows of `seqlen` tokens (the
remainder is dropped), and perplexity is exp(total NLL / predicted tokens).
"""

from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm

from ..errors import SlebError
from ..nll import chunked_nll, final_hidden

log = logging.getLogger(__name__)


def token_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows `[n, seqlen]` of the tokenized text."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise SlebError(f"The text has {ids.numel()} tokens, fewer than one window of {seqlen}.")
    return ids[: count * seqlen].view(count, seqlen)


@torch.inference_mode()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> dict:
    """Perplexity of `model` over the windows, with the NLL and token counts behind it."""
    total = 0.0
    for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress):
        total += float(chunked_nll(model, final_hidden(model, batch), batch).sum())
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    return {"perplexity": math.exp(total / tokens), "nll": total, "predicted_tokens": tokens,
            "windows": int(windows.shape[0]), "seqlen": int(windows.shape[1])}
