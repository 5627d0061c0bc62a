"""Token-level negative log-likelihood of a causal LM, with the output head applied in chunks.

`final_hidden` runs the model's own forward but stops it at the output head: a
pre-hook on the head captures the head's input and hands the head an empty slice,
so the full `[batch, tokens, vocab]` logits are never built. `chunked_nll` then
applies the head over a few thousand tokens at a time and sums the cross-entropy.
`check_head` verifies once per model that this equals the model's own logits.
Ids go to the input embeddings' device, hidden chunks to the head's, targets to the
logits' (`sleb.devices`), so this works with a model spread over several devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import text_config
from .devices import head_device, to_input
from .errors import SlebError

CHUNK_ELEMENTS = 2**25  # logits held at once: 32M floats (128 MiB in fp32)


def _head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise SlebError(f"{type(model).__name__} has no output embeddings (LM head); is it a causal LM?")
    return head


def _softcap(model: nn.Module) -> float | None:
    return getattr(text_config(model), "final_logit_softcapping", None)


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits for final hidden states, as the model's own forward computes them, on the head's device."""
    logits = _head(model)(hidden.to(head_device(model)))
    cap = _softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.inference_mode()
def final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the output head would receive, without computing the logits."""
    captured: list[torch.Tensor] = []

    def grab(_module, args):
        captured.append(args[0])
        return (args[0][..., :0, :],) + tuple(args[1:])

    handle = _head(model).register_forward_pre_hook(grab)
    try:
        model(input_ids=to_input(model, input_ids), use_cache=False)
    finally:
        handle.remove()
    return captured[0]


@torch.inference_mode()
def chunked_nll(model: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed NLL per sequence (float64, shape [batch]) of predicting token t+1 from position t."""
    vocab = _head(model).weight.shape[0]
    batch, length, _ = hidden.shape
    per_chunk = max(1, CHUNK_ELEMENTS // (vocab * batch))
    targets = input_ids[:, 1:]
    total = torch.zeros(batch, dtype=torch.float64, device=head_device(model))
    for start in range(0, length - 1, per_chunk):
        stop = min(start + per_chunk, length - 1)
        logits = head_logits(model, hidden[:, start:stop]).float()
        chunk = targets[:, start:stop].to(logits.device)
        loss = F.cross_entropy(logits.reshape(-1, vocab), chunk.reshape(-1), reduction="none")
        total += loss.view(batch, -1).sum(dim=1, dtype=torch.float64).to(total.device)
    return total


@torch.inference_mode()
def full_nll(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed NLL per sequence from the model's own full logits (the plain, reference way)."""
    logits = model(input_ids=to_input(model, input_ids), use_cache=False).logits.float()
    targets = input_ids[:, 1:].to(logits.device)
    vocab = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), targets.reshape(-1), reduction="none")
    return loss.view(input_ids.shape[0], -1).sum(dim=1, dtype=torch.float64)


def check_head(model: nn.Module, input_ids: torch.Tensor) -> None:
    """Fail loudly if the chunked head path does not reproduce the model's own logits."""
    sample = to_input(model, input_ids[:1, : min(16, input_ids.shape[1])])
    with torch.inference_mode():
        expected = model(input_ids=sample, use_cache=False).logits.float()
        got = head_logits(model, final_hidden(model, sample)).float().to(expected.device)
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-3, atol=1e-3):
        raise SlebError(
            f"{type(model).__name__} transforms its logits after the output head in a way sleb does not "
            "reproduce (e.g. a logit scale); the fast NLL would be wrong. Please report this architecture."
        )
