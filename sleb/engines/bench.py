"""Dense-vs-pruned speed on llama.cpp: two GGUF files in one process, alternated, medians, the ideal beside.

What is timed (each model in its own llama.cpp context, the same thread count):

- prefill: `eval` of a seeded random prompt into an emptied KV cache (logits of the last
  position only, as a generation does);
- decode: `new_tokens - 1` one-token steps after an untimed prefill, each step timed alone,
  dense step k then pruned step k (A B A B), the cache cut back to the bare prompt after each
  round; rate = 1 / median step time (`decode_b1_total`: steps / median round total).

`warmup` untimed rounds first. The ideal speedup is the FLOP ratio of the two files
(`sleb.speed.gguf_matmul_params`, the same counting as the torch benchmark).
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time

from ..errors import SlebError
from ..speed.flops import decode_flops, gguf_matmul_params, params_flops_per_token, prefill_flops
from ..speed.measure import add_speedups
from ..speed.prompts import random_prompt
from ..speed.runner import loadavg
from .llamacpp import LlamaCppEngine

log = logging.getLogger(__name__)

DECODE_METHOD = ("llama.cpp eval of one token per step after an untimed prefill, dense and pruned interleaved "
                 "step by step, each step timed; rate = 1 / median step time (decode_b1_total: steps / median "
                 "round total)")


class _Side:
    """One GGUF in llama.cpp, with the prompt's length to cut its cache back to."""

    def __init__(self, path, prompt: list[int], new_tokens: int, threads: int):
        self.engine = LlamaCppEngine(path, n_ctx=len(prompt) + new_tokens + 8, threads=threads)
        self.llm = self.engine.llm
        self.prompt = prompt
        self.steps = new_tokens - 1

    def prefill(self) -> float:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(self.prompt)
        return time.perf_counter() - start

    def step(self, token: int) -> float:
        start = time.perf_counter()
        self.llm.eval([token])
        return time.perf_counter() - start

    def rollback(self) -> None:
        self.llm.n_tokens = len(self.prompt)  # the next eval drops every cached position after the prompt


def _round(sides: dict[str, _Side], runs: dict, tokens: list[int]) -> None:
    """Prefill samples, then one decode round, each alternated dense / pruned."""
    for name, side in sides.items():
        runs[name]["prefill_s"].append(side.prefill())
    for side in sides.values():  # the prompt's cache for the decode round (untimed)
        side.prefill()
    totals = dict.fromkeys(sides, 0.0)
    for k in range(next(iter(sides.values())).steps):
        for name, side in sides.items():
            seconds = side.step(tokens[k])
            runs[name]["decode_b1_step_s"].append(seconds)
            totals[name] += seconds
    for name, side in sides.items():
        runs[name]["decode_b1_s"].append(totals[name])
        side.rollback()


def _figures(path, samples: dict, prompt_len: int, steps: int) -> dict:
    counts = gguf_matmul_params(path)
    med = {key: statistics.median(values) for key, values in samples.items()}
    return {"prefill_s": med["prefill_s"], "prefill_tok_s": prompt_len / med["prefill_s"],
            "decode_b1_step_s": med["decode_b1_step_s"], "decode_b1_tok_s": 1 / med["decode_b1_step_s"],
            "decode_b1_total_tok_s": steps / med["decode_b1_s"], "blocks": counts["num_blocks"],
            "params": counts["blocks"] + counts["head"] + counts["other"], "file_bytes": os.path.getsize(path),
            "flops_per_token_params": params_flops_per_token(counts),
            "prefill_flops": prefill_flops(counts, prompt_len),
            "decode_b1_flops_per_token": decode_flops(counts, prompt_len, steps) / steps}


def measure_llamacpp_speed(dense_path, pruned_path, *, prompt_len: int = 256, new_tokens: int = 64,
                           repeats: int = 5, warmup: int = 1, threads: int | None = None, seed: int = 0,
                           vocab: int | None = None) -> dict:
    """Time two GGUF files side by side with llama.cpp; every figure, the ideal speedups and the settings."""
    if min(prompt_len, repeats) < 1 or new_tokens < 2 or warmup < 0:
        raise SlebError("prompt_len and repeats must be >= 1, new_tokens >= 2, warmup >= 0.")
    probe = LlamaCppEngine(dense_path, n_ctx=8, threads=threads)
    vocab = vocab or probe.llm.n_vocab()
    special = {probe.llm.token_bos(), probe.llm.token_eos()}
    threads = probe.threads
    probe.close()
    ids = random_prompt(vocab, special, 1, prompt_len + new_tokens, seed)[0].tolist()
    prompt, continuation = ids[:prompt_len], ids[prompt_len:]
    sides = {name: _Side(path, prompt, new_tokens, threads) for name, path in (("dense", dense_path),
                                                                               ("pruned", pruned_path))}
    runs = {name: {"prefill_s": [], "decode_b1_step_s": [], "decode_b1_s": []} for name in sides}
    load_start, started = loadavg(), time.perf_counter()
    for _ in range(warmup):
        _round(sides, {name: {k: [] for k in v} for name, v in runs.items()}, continuation)
    for i in range(repeats):
        _round(sides, runs, continuation)
        log.info("Round %d/%d: prefill %.3f / %.3f s, decode step %.2f / %.2f ms (dense / pruned)", i + 1, repeats,
                 runs["dense"]["prefill_s"][-1], runs["pruned"]["prefill_s"][-1],
                 1e3 * statistics.median(runs["dense"]["decode_b1_step_s"][-(new_tokens - 1):]),
                 1e3 * statistics.median(runs["pruned"]["decode_b1_step_s"][-(new_tokens - 1):]))
    for side in sides.values():
        side.engine.close()
    result = {"engine": "llamacpp", "dense_model": str(dense_path), "pruned_model": str(pruned_path),
              "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats, "warmup": warmup, "seed": seed,
              "threads": threads, "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
              "decode_method": DECODE_METHOD, "loadavg_start": load_start, "loadavg_end": loadavg(),
              "wall_s": time.perf_counter() - started, "llama_cpp_python_version": _version()}
    for name, path in (("dense", dense_path), ("pruned", pruned_path)):
        figures = _figures(path, runs[name], prompt_len, new_tokens - 1)
        result.update({f"{name}_{key}": value for key, value in figures.items()})
    add_speedups(result, runs)
    result["runs"] = runs
    return result


def _version() -> str:
    import llama_cpp

    return llama_cpp.__version__
