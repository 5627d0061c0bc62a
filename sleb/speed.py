"""Dense-vs-pruned speed benchmark: prefill, time to first token, decode, memory, and the ideal speedup.

    from sleb.speed import measure_speed, format_speed
    result = measure_speed(dense, pruned, tokenizer, prompt_len=512, decode_batch=8, new_tokens=32)
    print(format_speed(result))

Both models are held in one process and run on the same random prompt (seeded, no special
tokens). Everything runs under `torch.inference_mode()`, timed with `time.perf_counter` and,
on CUDA, `torch.cuda.synchronize()` on both sides of every timer. What is timed:

- prefill: one forward over a batch-1 prompt into a fresh KV cache, with the logits of the
  last position only (`logits_to_keep=1`, as `generate` does), so the head runs once per prompt;
- time to first token (TTFT): `generate(max_new_tokens=1)` on the same prompt: prefill, head,
  the greedy choice and `generate`'s own set-up;
- decode, at batch 1 and at batch `decode_batch`, measured directly: the prompt's KV cache is
  prefilled once, untimed, and after each round cut back to the bare prompt (prefilled again
  for caches that cannot be cut back, such as sliding-window ones); each round
  times `new_tokens - 1` greedy one-token steps on it (the first token comes from the prefill),
  so the prefill is excluded exactly and EOS can never stop it. The two models' steps are
  interleaved (dense step k, pruned step k, ...) and each step is timed alone. Rate =
  batch / median step time (robust: a step slowed by another process sharing the CPU is an
  outlier, and such additive noise would pull every ratio towards 1); `*_total_tok_s` is
  (new_tokens - 1) x batch / median round total, for comparison;
- a cross-check at batch 1 through `generate` itself (`min_new_tokens = max_new_tokens`):
  (new_tokens - 1) / (generate time - TTFT), which also carries `generate`'s per-step overhead.

Order: `warmup` untimed batch-1 rounds; one untimed memory pass per model (all the work once,
which also warms the batch shapes); the decode prompts' caches are prefilled; then `repeats`
timed rounds, where every measurement runs on
the dense model, then on the pruned one (A B A B ...), so drift in the machine's load hits
both. Prefill and TTFT take `prefill_samples` alternated samples per round. Each figure is the
median of its samples; a speedup is the ratio of the two medians. `paired_speedup_*` is the
median of the ratios of back-to-back samples (dense sample i / pruned sample i, or step k of
each), which cancels slow load changes better still.

Memory: CUDA, `torch.cuda.max_memory_allocated` over the model's memory pass (reset before);
CPU, the process's peak RSS (VmHWM, reset by writing 5 to /proc/self/clear_refs) over the pass.
Both models stay resident, so the peak is also given over the baseline at the reset (this
model's activations, KV cache, temporaries), beside the model's parameter + buffer bytes.

The ideal speedup is the ratio of the FLOPs each model does for the same work, counted from
its parameters: 2 x (matmul weights of the blocks + output head, vocab x hidden, counted even
when tied to the embedding + any other matmul outside the blocks) per token, the embedding
lookup counted as free, plus attention's sequence-length term, 4 x (heads x head_dim) x keys
per token and block (scores and weighted sum; causal, so a prompt's position i sees i + 1
keys). The prefill counts the head once (only the last position's logits are computed), decode
once per token. `ideal_speedup_params` is the plain parameter ratio (no attention term, head
per token) for reference. Each measured speedup is reported beside its ideal, with
`fidelity_* = measured / ideal`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from inspect import signature
from pathlib import Path

import torch
from torch import nn

from .blocks import find_blocks, text_config
from .errors import SlebError
from .loading import model_device

log = logging.getLogger(__name__)

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx", "seq_length")

DECODE_METHOD = ("manual greedy loop over the KV cache: new_tokens - 1 one-token steps after an untimed prefill, "
                 "dense and pruned interleaved step by step, each step timed; rate = batch / median step time "
                 "(*_total_tok_s: steps x batch / median round total)")

# figure -> (table label, the ideal it is compared with); rates are `<figure>_tok_s`, TTFT is `ttft_s`
FIGURES = {
    "prefill": ("prefill, batch 1", "prefill"),
    "ttft": ("time to first token, batch 1", "prefill"),
    "decode_b1": ("decode, batch 1 (median step)", "decode_b1"),
    "decode_b1_total": ("decode, batch 1 (round totals)", "decode_b1"),
    "decode_batch": ("decode, batch {decode_batch} (median step)", "decode_batch"),
    "decode_batch_total": ("decode, batch {decode_batch} (round totals)", "decode_batch"),
    "generate_decode_b1": ("decode via generate, batch 1", "decode_b1"),
}
IDEAL_OF = {key: ideal for key, (_, ideal) in FIGURES.items()}
# figure -> its samples; `paired_speedup_<figure>` is the median of the dense/pruned ratios of back-to-back samples
PAIRED = {"prefill": "prefill_s", "ttft": "ttft_s", "decode_b1": "decode_b1_step_s",
          "decode_batch": "decode_batch_step_s"}


# ----------------------------------------------------------------------------------------------- FLOPs


def matmul_params(model: nn.Module) -> dict:
    """Weights that cost a multiply-add per token: blocks, output head, other matmuls; and attention width.

    A weight counts when it is a parameter of two or more dimensions outside any `nn.Embedding`
    (lookups are free). The head is `vocab x hidden` even when tied to the input embedding.
    """
    layout = find_blocks(model)
    blocks = sum(p.numel() for p in layout.blocks.parameters() if p.dim() >= 2)
    head_module = model.get_output_embeddings()
    head_weight = getattr(head_module, "weight", None)
    if head_weight is None:
        head_weight = model.get_input_embeddings().weight
    in_blocks = {id(p) for p in layout.blocks.parameters()}
    skip = {id(head_weight), id(model.get_input_embeddings().weight)} | in_blocks
    other = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for p in module.parameters(recurse=False):
            if p.dim() >= 2 and id(p) not in skip:
                other += p.numel()
                skip.add(id(p))
    config = text_config(model)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    width = heads * head_dim if heads and head_dim else (hidden or 0)
    return {"blocks": blocks, "head": head_weight.numel(), "other": other, "num_blocks": len(layout.blocks),
            "attention_width": int(width)}


def _attention_flops(counts: dict, keys: int) -> int:
    """Scores and weighted sum of one token attending to `keys` positions, over all blocks."""
    return 4 * counts["num_blocks"] * counts["attention_width"] * keys


def prefill_flops(counts: dict, prompt_len: int, head_tokens: int = 1) -> int:
    """FLOPs of one prompt's prefill; the head runs on `head_tokens` positions (1 = last only)."""
    linear = 2 * (counts["blocks"] + counts["other"]) * prompt_len + 2 * counts["head"] * head_tokens
    return linear + _attention_flops(counts, prompt_len * (prompt_len + 1) // 2)


def decode_flops(counts: dict, prompt_len: int, steps: int) -> int:
    """FLOPs of `steps` one-token decode steps of one sequence after a `prompt_len` prefill."""
    per_token = 2 * (counts["blocks"] + counts["other"] + counts["head"])
    keys = sum(prompt_len + k for k in range(1, steps + 1))
    return per_token * steps + _attention_flops(counts, keys)


def params_flops_per_token(counts: dict) -> int:
    """2 x (blocks + other + head) matmul weights: FLOPs per token without the attention term."""
    return 2 * (counts["blocks"] + counts["other"] + counts["head"])


# ----------------------------------------------------------------------------------------------- inputs


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


# ----------------------------------------------------------------------------------------------- memory


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each tensor once (tied weights once)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak memory over a stretch of work: CUDA allocator peak, else the process's peak RSS (VmHWM)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.base = 0

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:  # hand freed heap back first, so the baseline is what is really in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            log.warning("Cannot reset the peak RSS (/proc/self/clear_refs); it is the peak since the process began.")
        self.base = (_proc_status_kib("VmRSS") or 0) * 1024

    def read(self) -> tuple[float, float]:
        """(peak bytes, peak bytes over the baseline at `reset`)."""
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            hwm = _proc_status_kib("VmHWM")
            peak = hwm * 1024 if hwm is not None else float("nan")
        return float(peak), float(peak - self.base)


# ----------------------------------------------------------------------------------------------- timing


class _Runner:
    """Prefill, decode steps and `generate` of one model on fixed prompts, each call timed on its own."""

    def __init__(self, model: nn.Module, device: torch.device, prompt: torch.Tensor, decode_batch: int,
                 new_tokens: int, batch1_new_tokens: int, prefill_logits: str, pad_token_id: int):
        from transformers import DynamicCache

        self.model = model
        self.cuda = device.type == "cuda"
        self.prompts = {"b1": prompt[:1].to(device), "batch": prompt[:decode_batch].to(device)}
        self.steps = {"b1": batch1_new_tokens - 1, "batch": new_tokens - 1}
        self.batch1_new_tokens = batch1_new_tokens
        self.pad_token_id = pad_token_id
        self.make_cache = lambda: DynamicCache(config=model.config)
        params = signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep = {"logits_to_keep": 1} if prefill_logits == "last" and "logits_to_keep" in params else {}
        self.kept: dict[str, tuple] = {}  # kind -> (KV cache of the prompt, first token)

    def _timed(self, fn: Callable):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
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


def _decode_round(runners: dict[str, _Runner], kind: str, runs: dict) -> None:
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
def _quiet(threads: int | None):
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


def _loadavg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _versions() -> dict:
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}


# ----------------------------------------------------------------------------------------------- main API


def measure_speed(dense: nn.Module, pruned: nn.Module, tokenizer=None, *, prompt_len: int = 256,
                  decode_batch: int = 8, new_tokens: int = 64, batch1_new_tokens: int | None = None,
                  repeats: int = 3, warmup: int = 1, device=None, threads: int | None = None, seed: int = 0,
                  prefill_logits: str = "last", generate_check: bool = True, prefill_samples: int = 3) -> dict:
    """Time `dense` and `pruned` side by side in this process; return every figure and the settings.

    `tokenizer` (may be None) only names the special tokens to keep out of the random prompt.
    `device`: where to run (both models are moved there if they are elsewhere); default: where
    the dense model's input embeddings are. `threads`: torch CPU threads for the duration.
    `prefill_logits`: "last" (as `generate` does; the head runs once per prompt) or "all".
    `generate_check`: also time `generate` end to end at batch 1 (decode rate by subtraction).
    `prefill_samples`: prefill and TTFT timings per round (each alternated dense, pruned), as a
    prefill is one short call while decode gives a timing per step.
    See the module docstring for what each figure means.
    """
    if dense is pruned:
        raise SlebError("measure_speed needs two distinct models (load twice or copy.deepcopy the dense one).")
    if prefill_logits not in ("last", "all"):
        raise SlebError(f"prefill_logits must be 'last' or 'all', not {prefill_logits!r}.")
    batch1_new_tokens = new_tokens if batch1_new_tokens is None else batch1_new_tokens
    if min(prompt_len, decode_batch, new_tokens, batch1_new_tokens, repeats, prefill_samples) < 1 or warmup < 0:
        raise SlebError("prompt_len, decode_batch, new_tokens, batch1_new_tokens, repeats and prefill_samples "
                        "must be >= 1, warmup >= 0.")
    if new_tokens < 2 or batch1_new_tokens < 2:
        raise SlebError("new_tokens must be >= 2: the first token comes from the prefill, decode starts after.")

    device = torch.device(device) if device is not None else model_device(dense)
    for model in (dense, pruned):
        if model_device(model) != device:
            log.info("Moving %s to %s", type(model).__name__, device)
            model.to(device)
        model.eval()

    limits = [x for x in (context_limit(dense), context_limit(pruned)) if x is not None]
    limit = min(limits) if limits else None
    longest = max(new_tokens, batch1_new_tokens)
    requested = prompt_len
    if limit is not None and prompt_len + longest > limit:
        prompt_len = limit - longest
        if prompt_len < 1:
            raise SlebError(f"The context limit ({limit}) leaves no room for a prompt and {longest} new tokens.")
        log.warning("Prompt clipped from %d to %d tokens: context limit %d minus %d new tokens.",
                    requested, prompt_len, limit, longest)

    vocab = text_config(dense).vocab_size
    if tokenizer is not None:
        vocab = min(vocab, len(tokenizer))
    prompt = random_prompt(vocab, special_ids(tokenizer, text_config(dense)), decode_batch, prompt_len, seed)
    pad = getattr(text_config(dense), "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = int(prompt[0, 0])

    runners = {name: _Runner(model, device, prompt, decode_batch, new_tokens, batch1_new_tokens, prefill_logits,
                             pad) for name, model in (("dense", dense), ("pruned", pruned))}
    cuda = device.type == "cuda"
    runs: dict[str, dict[str, list[float]]] = {"dense": {}, "pruned": {}}
    memory: dict[str, tuple[float, float]] = {}
    load_start = _loadavg()
    started = time.perf_counter()

    with _quiet(threads), torch.inference_mode():
        for i in range(warmup):
            log.info("Warm-up round %d/%d", i + 1, warmup)
            for runner in runners.values():
                runner.work(kinds=("b1",), generate=generate_check)
        peak = _PeakMemory(cuda)
        for name, runner in runners.items():  # all the work once per model, untimed, nothing else held
            log.info("Memory pass: %s", name)
            peak.reset()
            runner.work(generate=generate_check)
            memory[name] = peak.read()
        for runner in runners.values():
            runner.prepare()
        for i in range(repeats):
            gc.collect()
            for _ in range(prefill_samples):
                for name, runner in runners.items():  # A B A B: drift hits both
                    runs[name].setdefault("prefill_s", []).append(runner.prefill("b1")[0])
            for _ in range(prefill_samples):
                for name, runner in runners.items():
                    runs[name].setdefault("ttft_s", []).append(runner.generate(1))
            if generate_check:
                for name, runner in runners.items():
                    runs[name].setdefault("generate_b1_s", []).append(runner.generate(batch1_new_tokens))
            for kind in ("b1", "batch"):
                _decode_round(runners, kind, runs)
            log.info("Round %d/%d: prefill %.3f / %.3f s, decode batch 1 %.3f / %.3f s, batch %d %.3f / %.3f s "
                     "(dense / pruned)", i + 1, repeats, runs["dense"]["prefill_s"][-1],
                     runs["pruned"]["prefill_s"][-1], runs["dense"]["decode_b1_s"][-1],
                     runs["pruned"]["decode_b1_s"][-1], decode_batch, runs["dense"]["decode_batch_s"][-1],
                     runs["pruned"]["decode_batch_s"][-1])
        used_threads = torch.get_num_threads()
    for runner in runners.values():
        runner.kept.clear()

    prefill_mode = "last" if runners["dense"].keep else "all"
    result: dict = {
        "prompt_len": prompt_len, "prompt_len_requested": requested, "prompt_clipped": prompt_len != requested,
        "context_limit": limit, "decode_batch": decode_batch, "new_tokens": new_tokens,
        "batch1_new_tokens": batch1_new_tokens, "repeats": repeats, "prefill_samples": prefill_samples,
        "warmup": warmup, "seed": seed,
        "device": str(device), "dtype": str(next(dense.parameters()).dtype).replace("torch.", ""),
        "threads": used_threads, "interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
        "prefill_logits": prefill_mode,
        "decode_method": DECODE_METHOD,
        "ideal_includes_attention": True,
        "loadavg_start": load_start, "loadavg_end": _loadavg(), "wall_s": time.perf_counter() - started,
        **_versions(),
    }
    steps = {"b1": batch1_new_tokens - 1, "batch": new_tokens - 1}
    batch = {"b1": 1, "batch": decode_batch}
    for name, model in (("dense", dense), ("pruned", pruned)):
        c = matmul_params(model)
        med = {key: statistics.median(values) for key, values in runs[name].items()}
        r = {key: value for key, value in med.items() if not key.endswith("_step_s")}
        r["prefill_tok_s"] = prompt_len / r["prefill_s"]
        for kind in ("b1", "batch"):
            r[f"decode_{kind}_step_s"] = med[f"decode_{kind}_step_s"]
            r[f"decode_{kind}_tok_s"] = batch[kind] / med[f"decode_{kind}_step_s"]
            r[f"decode_{kind}_total_tok_s"] = steps[kind] * batch[kind] / r[f"decode_{kind}_s"]
        if generate_check:
            r["generate_decode_b1_tok_s"] = steps["b1"] / (r["generate_b1_s"] - r["ttft_s"])
        r["blocks"] = c["num_blocks"]
        r["params"] = sum(p.numel() for p in model.parameters())
        r["model_bytes"] = model_bytes(model)
        peak_bytes, over_base = memory[name]
        if cuda:
            r["peak_cuda_allocated_bytes"] = peak_bytes  # both models resident
            r["peak_cuda_over_baseline_bytes"] = over_base  # activations, KV cache, temporaries of this model
        else:
            r["peak_rss_bytes"] = peak_bytes  # whole process, both models resident
            r["peak_rss_over_baseline_bytes"] = over_base  # approximate working memory of this model's runs
        r["peak_estimate_bytes"] = r["model_bytes"] + max(over_base, 0.0)
        r["block_matmul_params"] = c["blocks"]
        r["head_params"] = c["head"]
        r["other_matmul_params"] = c["other"]
        r["attention_width"] = c["attention_width"]
        r["flops_per_token_params"] = params_flops_per_token(c)
        r["prefill_flops"] = prefill_flops(c, prompt_len, 1 if prefill_mode == "last" else prompt_len)
        for kind in ("b1", "batch"):
            r[f"decode_{kind}_flops_per_token"] = decode_flops(c, prompt_len, steps[kind]) / steps[kind]
        result.update({f"{name}_{key}": value for key, value in r.items()})

    ideal = {
        "prefill": result["dense_prefill_flops"] / result["pruned_prefill_flops"],
        "decode_b1": result["dense_decode_b1_flops_per_token"] / result["pruned_decode_b1_flops_per_token"],
        "decode_batch": result["dense_decode_batch_flops_per_token"] / result["pruned_decode_batch_flops_per_token"],
    }
    for key, value in ideal.items():
        result[f"ideal_speedup_{key}"] = value
    result["ideal_speedup_params"] = result["dense_flops_per_token_params"] / result["pruned_flops_per_token_params"]
    for key, ideal_key in IDEAL_OF.items():
        if key == "ttft":
            speedup = result["dense_ttft_s"] / result["pruned_ttft_s"]
        elif f"dense_{key}_tok_s" in result:
            speedup = result[f"pruned_{key}_tok_s"] / result[f"dense_{key}_tok_s"]
        else:
            continue
        result[f"speedup_{key}"] = speedup
        result[f"fidelity_{key}"] = speedup / ideal[ideal_key]  # measured / ideal
    for key, samples in PAIRED.items():  # samples taken back to back: dense, then pruned
        ratios = [a / b for a, b in zip(runs["dense"][samples], runs["pruned"][samples], strict=True)]
        result[f"paired_speedup_{key}"] = statistics.median(ratios)
    result["memory_note"] = (
        "model_bytes: parameters + buffers. " + (
            "peak_cuda_allocated_bytes: torch.cuda.max_memory_allocated over the model's memory pass (both models "
            "resident); peak_cuda_over_baseline_bytes: that peak minus what was allocated before it."
            if cuda else
            "peak_rss_bytes: process peak RSS (VmHWM, reset through /proc/self/clear_refs) over the model's memory "
            "pass, both models resident; peak_rss_over_baseline_bytes: that peak minus the RSS at the reset "
            "(activations, KV cache, temporaries; approximate, the allocator keeps freed memory)."
        ) + " peak_estimate_bytes: model_bytes + the over-baseline peak."
    )
    result["runs"] = runs
    return result


# ----------------------------------------------------------------------------------------------- table


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.1f} {unit}"


def format_speed(result: dict) -> str:
    """A table: dense | pruned | speedup | ideal | measured/ideal | paired speedup; then memory and settings."""
    header = f"{'':40} {'dense':>14} {'pruned':>14} {'speedup':>8} {'ideal':>7} {'meas/ideal':>10} {'paired':>7}"
    lines = [header, "-" * len(header)]
    for key, (label, ideal_key) in FIGURES.items():
        if f"speedup_{key}" not in result:
            continue
        suffix, unit = ("ttft_s", "s") if key == "ttft" else (f"{key}_tok_s", "tok/s")
        lines.append(
            f"{label.format(**result):40} {_fmt(result['dense_' + suffix], unit):>14} "
            f"{_fmt(result['pruned_' + suffix], unit):>14} {result['speedup_' + key]:>7.3f}x "
            f"{result['ideal_speedup_' + ideal_key]:>6.3f}x {result['fidelity_' + key]:>10.3f}"
            + (f" {result['paired_speedup_' + key]:>6.3f}x" if f"paired_speedup_{key}" in result else ""))
    mib = 2**20
    if "dense_peak_cuda_allocated_bytes" in result:
        memory = [("peak CUDA allocated (both models)", "peak_cuda_allocated_bytes"),
                  ("  of which this model's run", "peak_cuda_over_baseline_bytes")]
    else:
        memory = [("peak process RSS (both models)", "peak_rss_bytes"),
                  ("  over baseline (this model's run)", "peak_rss_over_baseline_bytes")]
    memory = [("model (params + buffers)", "model_bytes"), *memory,
              ("estimate: model + its run", "peak_estimate_bytes")]
    for label, key in memory:
        d, p = result[f"dense_{key}"], result[f"pruned_{key}"]
        ratio = d / p if p > 0 else float("nan")
        lines.append(f"{label:40} {d / mib:>10,.1f} MiB {p / mib:>10,.1f} MiB {ratio:>7.3f}x")
    lines.append(f"{'blocks / parameters':40} {result['dense_blocks']:>4} / {result['dense_params'] / 1e6:6.1f}M "
                 f"{result['pruned_blocks']:>4} / {result['pruned_params'] / 1e6:6.1f}M")
    lines.append(
        f"prompt {result['prompt_len']} tokens" + (f" (clipped from {result['prompt_len_requested']})"
                                                    if result["prompt_clipped"] else "")
        + f", {result['new_tokens']} new tokens ({result['batch1_new_tokens']} at batch 1), "
        f"{result['repeats']} rounds ({result['prefill_samples']} prefill/TTFT samples each), medians; "
        f"{result['device']} {result['dtype']}, {result['threads']} threads; "
        f"ideal = FLOP ratio incl. attention (params only: {result['ideal_speedup_params']:.3f}x)")
    return "\n".join(lines)
