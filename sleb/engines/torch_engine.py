"""The transformers engine: `generate` with a streamer; pruned sides bypass blocks in the one model in memory.

Dense and every pruned variant share one model: a `TorchEngine` with `removed` runs it with
those blocks bypassed by the model's `BlockSwitch`, so all engines of one model share its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from transformers.generation.streamers import BaseStreamer

from ..evaluation.perplexity import perplexity
from .base import Engine, GenSettings


class _Streamer(BaseStreamer):
    """Hands each new token to `emit`; the first `put` (the prompt) is skipped."""

    def __init__(self, emit: Callable[[list[int]], None]):
        self.emit = emit
        self.prompt_seen = False

    def put(self, value):
        if self.prompt_seen:
            self.emit(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self):
        pass


class _StopOnEvent:
    """A stopping criterion: stop when the event is set (the user pressed Stop or left)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TorchEngine(Engine):
    """`model` (with `removed` blocks bypassed through `switch`) run by transformers."""

    name = "torch"

    def __init__(self, model, tokenizer, removed: Sequence[int] = (), switch=None, lock: threading.Lock | None = None):
        if removed and switch is None:
            raise ValueError("bypassing blocks needs the model's BlockSwitch")
        self.model, self.tokenizer = model, tokenizer
        self.removed = tuple(sorted(removed))
        self.switch = switch
        self.lock = lock or threading.Lock()

    def _bypass(self):
        return self.switch.state(skip=self.removed) if self.switch is not None else nullcontext()

    def _pad_id(self) -> int:
        for pad in (self.model.generation_config.pad_token_id, getattr(self.tokenizer, "pad_token_id", None),
                    getattr(self.tokenizer, "eos_token_id", None)):
            if pad is not None:
                return pad
        return 0

    def generate(self, ids, settings: GenSettings, stop: threading.Event, emit) -> None:
        from transformers import StoppingCriteriaList

        sampling = ({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
                    if settings.temperature > 0 else {"do_sample": False})
        if settings.temperature > 0:
            torch.manual_seed(settings.seed)
        input_ids = torch.as_tensor([list(ids)], device=self.model.get_input_embeddings().weight.device)
        with self._bypass(), torch.inference_mode():
            self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=settings.max_new_tokens, streamer=_Streamer(emit),
                stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), pad_token_id=self._pad_id(), **sampling)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def perplexity(self, windows: torch.Tensor) -> dict:
        with self._bypass():
            return perplexity(self.model, windows)
