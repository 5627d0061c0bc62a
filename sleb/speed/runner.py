"""Timing one model: prefill, decode steps over a kept KV cache, and `generate`, each call timed alone.

Timers use `time.perf_counter`, with every CUDA device synchronized on both sides on CUDA.
Prompts go to the model's input embeddings' device (`sleb.devices`).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from inspect import signature

import torch
from torch import nn

from ..devices import to_input
from ..errors import SlebError


def synchronize(cuda: bool) -> None:
    """Wait for every CUDA device (a model may be spread over several)."""
    if cuda:
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


class Runner:
    """Prefill, decode steps and `generate` of one model on fixed prompts, each call timed on its own."""

    def __init__(self, model: nn.Module, cuda: bool, prompt: torch.Tensor, decode_batch: int,
                 new_tokens: int, batch1_new_tokens: int, prefill_logits: str, pad_token_id: int):
        from transformers import DynamicCache

        self.model = model
        self.cuda = cuda
        self.prompts = {"b1": to_input(model, prompt[:1]), "batch": to_input(model, prompt[:decode_batch])}
        self.steps = {"b1": batch1_new_tokens - 1, "batch": new_tokens - 1}
        self.batch1_new_tokens = batch1_new_tokens
        self.pad_token_id = pad_token_id
        self.make_cache = lambda: DynamicCache(config=model.config)
        params = signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep = {"logits_to_keep": 1} if prefill_logits == "last" and "logits_to_keep" in params else {}
        self.kept: dict[str, tuple] = {}  # kind -> (KV cache of the prompt, first token)

    def _timed(self, fn: Callable):
        synchronize(self.cuda)
        start = time.perf_counter()
        out = fn()
        synchronize(self.cuda)
        return time.perf_counter() - start, out

    def prefill(self, kind: str):
        """(seconds, KV cache, greedy first token) of a prefill into a fresh cache."""
        cache, ids = self.make_cache(), self.prompts[kind]
        seconds, out = self._timed(
            lambda: self.model(input_ids=ids, use_cache=True, **{self.cache_kw: cache}, **self.keep))
        return seconds, cache, out.logits[:, -1].argmax(-1)

    def step(self, cache, token: torch.Tensor):
        """(seconds, next greedy token) of one decode step: one new token per sequence on the cache."""
        seconds, out = self._timed(lambda: self.model(input_ids=token[:, None], use_cache=True,
                                                      **{self.cache_kw: cache}))
        return seconds, out.logits[:, -1].argmax(-1)

    def generate(self, new_tokens: int) -> float:
        """Seconds of greedy `generate` at batch 1 that must make exactly `new_tokens` tokens."""
        ids = self.prompts["b1"]
        seconds, out = self._timed(lambda: self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=1,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
            pad_token_id=self.pad_token_id, temperature=None, top_p=None, top_k=None))
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise SlebError(f"generate stopped early: {out.shape[1] - ids.shape[1]} of {new_tokens} new tokens.")
        return seconds

    def rollback(self, kind: str) -> None:
        """Put the kept cache of `kind` back to the bare prompt after its decode steps (or prefill it again)."""
        cache, token = self.kept[kind]
        # Only plain full-attention layers are cut back; sliding-window and other layers drop or
        # reshape past states as they go, so their prompt is prefilled again (untimed).
        plain = all(type(layer).__name__ == "DynamicLayer" for layer in getattr(cache, "layers", [None]))
        try:
            if not plain:
                raise ValueError("not a plain cache")
            cache.crop(-self.steps[kind])
        except (ValueError, RuntimeError, AttributeError):
            _, cache, token = self.prefill(kind)
        self.kept[kind] = (cache, token)

    def work(self, kinds=("b1", "batch"), generate: bool = True) -> None:
        """Everything once, untimed: prefill and decode per kind, TTFT and `generate`; nothing is kept."""
        for kind in kinds:
            _, cache, token = self.prefill(kind)
            for _ in range(self.steps[kind]):
                _, token = self.step(cache, token)
            del cache
            if kind == "b1":
                self.generate(1)
                if generate:
                    self.generate(self.batch1_new_tokens)

    def prepare(self) -> None:
        """Prefill and keep the prompts' KV caches that the timed decode rounds start from (untimed)."""
        for kind in self.prompts:
            _, cache, token = self.prefill(kind)
            self.kept[kind] = (cache, token)


def decode_round(runners: dict[str, Runner], kind: str, runs: dict) -> None:
    """Decode steps of all models interleaved step by step (A B A B ...), each step timed alone."""
    state = {name: runner.kept[kind] for name, runner in runners.items()}
    tokens = {name: token for name, (_, token) in state.items()}
    total = dict.fromkeys(runners, 0.0)
    steps = next(iter(runners.values())).steps[kind]
    for _ in range(steps):
        for name, runner in runners.items():
            seconds, tokens[name] = runner.step(state[name][0], tokens[name])
            runs[name].setdefault(f"decode_{kind}_step_s", []).append(seconds)
            total[name] += seconds
    for name, runner in runners.items():
        runs[name].setdefault(f"decode_{kind}_s", []).append(total[name])
        runner.rollback(kind)


@contextmanager
def quiet(threads: int | None):
    """Set torch's CPU threads, and keep Python's cyclic GC out of the timers (collected between rounds)."""
    old, gc_was_on = torch.get_num_threads(), gc.isenabled()
    if threads is not None:
        torch.set_num_threads(threads)
    gc.disable()
    try:
        yield
    finally:
        torch.set_num_threads(old)
        if gc_was_on:
            gc.enable()


def loadavg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def versions() -> dict:
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}
