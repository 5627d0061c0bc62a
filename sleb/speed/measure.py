"""`measure_speed`: time a dense and a pruned model side by side and summarise every figure."""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time

import torch
from torch import nn

from ..blocks import text_config
from ..devices import devices_of, input_device
from ..errors import SlebError
from .flops import decode_flops, matmul_params, params_flops_per_token, prefill_flops
from .memory import PeakMemory, model_bytes
from .prompts import context_limit, random_prompt, special_ids
from .runner import Runner, decode_round, loadavg, quiet, versions
from .table import IDEAL_OF, PAIRED

log = logging.getLogger(__name__)

DECODE_METHOD = ("manual greedy loop over the KV cache: new_tokens - 1 one-token steps after an untimed prefill, "
                 "dense and pruned interleaved step by step, each step timed; rate = batch / median step time "
                 "(*_total_tok_s: steps x batch / median round total)")


def _check_settings(dense, pruned, prompt_len, decode_batch, new_tokens, batch1_new_tokens, repeats, warmup,
                    prefill_logits, prefill_samples) -> None:
    if dense is pruned:
        raise SlebError("measure_speed needs two distinct models (load twice or copy.deepcopy the dense one).")
    if prefill_logits not in ("last", "all"):
        raise SlebError(f"prefill_logits must be 'last' or 'all', not {prefill_logits!r}.")
    if min(prompt_len, decode_batch, new_tokens, batch1_new_tokens, repeats, prefill_samples) < 1 or warmup < 0:
        raise SlebError("prompt_len, decode_batch, new_tokens, batch1_new_tokens, repeats and prefill_samples "
                        "must be >= 1, warmup >= 0.")
    if new_tokens < 2 or batch1_new_tokens < 2:
        raise SlebError("new_tokens must be >= 2: the first token comes from the prefill, decode starts after.")


def _place(models, device) -> None:
    """Move the models to `device` when one is asked for; a model spread over several devices stays put."""
    for model in models:
        if device is not None and input_device(model) != torch.device(device):
            if len(devices_of(model)) > 1:
                raise SlebError(f"{type(model).__name__} is spread over {', '.join(devices_of(model))}; "
                                "leave the device unset to measure it where it is.")
            log.info("Moving %s to %s", type(model).__name__, device)
            model.to(device)
        model.eval()


def _clip_prompt(dense, pruned, prompt_len: int, longest: int) -> tuple[int, int | None]:
    """The prompt length that leaves room for `longest` new tokens in both contexts, and the limit."""
    limits = [x for x in (context_limit(dense), context_limit(pruned)) if x is not None]
    limit = min(limits) if limits else None
    if limit is not None and prompt_len + longest > limit:
        clipped = limit - longest
        if clipped < 1:
            raise SlebError(f"The context limit ({limit}) leaves no room for a prompt and {longest} new tokens.")
        log.warning("Prompt clipped from %d to %d tokens: context limit %d minus %d new tokens.",
                    prompt_len, clipped, limit, longest)
        return clipped, limit
    return prompt_len, limit


def _prompt_and_pad(dense, tokenizer, decode_batch: int, prompt_len: int, seed: int) -> tuple[torch.Tensor, int]:
    vocab = text_config(dense).vocab_size
    if tokenizer is not None:
        vocab = min(vocab, len(tokenizer))
    prompt = random_prompt(vocab, special_ids(tokenizer, text_config(dense)), decode_batch, prompt_len, seed)
    pad = getattr(text_config(dense), "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = int(prompt[0, 0])
    return prompt, pad


def _run(runners: dict[str, Runner], cuda: bool, *, warmup: int, repeats: int, prefill_samples: int,
         generate_check: bool, batch1_new_tokens: int, decode_batch: int) -> tuple[dict, dict]:
    """Warm-up, one memory pass per model, then `repeats` alternated timed rounds; (samples, memory)."""
    runs: dict[str, dict[str, list[float]]] = {"dense": {}, "pruned": {}}
    memory: dict[str, tuple[float, float]] = {}
    for i in range(warmup):
        log.info("Warm-up round %d/%d", i + 1, warmup)
        for runner in runners.values():
            runner.work(kinds=("b1",), generate=generate_check)
    peak = PeakMemory(cuda)
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
            decode_round(runners, kind, runs)
        log.info("Round %d/%d: prefill %.3f / %.3f s, decode batch 1 %.3f / %.3f s, batch %d %.3f / %.3f s "
                 "(dense / pruned)", i + 1, repeats, runs["dense"]["prefill_s"][-1],
                 runs["pruned"]["prefill_s"][-1], runs["dense"]["decode_b1_s"][-1],
                 runs["pruned"]["decode_b1_s"][-1], decode_batch, runs["dense"]["decode_batch_s"][-1],
                 runs["pruned"]["decode_batch_s"][-1])
    for runner in runners.values():
        runner.kept.clear()
    return runs, memory


def _model_figures(model, samples: dict, memory: tuple[float, float], cuda: bool, prompt_len: int,
                   steps: dict, batch: dict, prefill_mode: str, generate_check: bool) -> dict:
    """One model's medians, rates, sizes, memory and FLOPs."""
    c = matmul_params(model)
    med = {key: statistics.median(values) for key, values in samples.items()}
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
    peak_bytes, over_base = memory
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
    return r


def add_speedups(result: dict, runs: dict) -> None:
    """Ideal (FLOP-ratio) speedups, measured speedups, their ratio, and paired speedups, into `result`.

    Only the figures present are compared (the llama.cpp benchmark has no TTFT or batch decode).
    """
    ideal = {"prefill": result["dense_prefill_flops"] / result["pruned_prefill_flops"]}
    for kind in ("b1", "batch"):
        if f"dense_decode_{kind}_flops_per_token" in result:
            ideal[f"decode_{kind}"] = (result[f"dense_decode_{kind}_flops_per_token"]
                                       / result[f"pruned_decode_{kind}_flops_per_token"])
    for key, value in ideal.items():
        result[f"ideal_speedup_{key}"] = value
    result["ideal_speedup_params"] = result["dense_flops_per_token_params"] / result["pruned_flops_per_token_params"]
    for key, ideal_key in IDEAL_OF.items():
        if key == "ttft" and "dense_ttft_s" in result:
            speedup = result["dense_ttft_s"] / result["pruned_ttft_s"]
        elif f"dense_{key}_tok_s" in result:
            speedup = result[f"pruned_{key}_tok_s"] / result[f"dense_{key}_tok_s"]
        else:
            continue
        result[f"speedup_{key}"] = speedup
        result[f"fidelity_{key}"] = speedup / ideal[ideal_key]  # measured / ideal
    for key, samples in PAIRED.items():  # samples taken back to back: dense, then pruned
        if samples in runs["dense"]:
            ratios = [a / b for a, b in zip(runs["dense"][samples], runs["pruned"][samples], strict=True)]
            result[f"paired_speedup_{key}"] = statistics.median(ratios)


def _memory_note(cuda: bool) -> str:
    return "model_bytes: parameters + buffers. " + (
        "peak_cuda_allocated_bytes: torch.cuda.max_memory_allocated over the model's memory pass (both models "
        "resident); peak_cuda_over_baseline_bytes: that peak minus what was allocated before it."
        if cuda else
        "peak_rss_bytes: process peak RSS (VmHWM, reset through /proc/self/clear_refs) over the model's memory "
        "pass, both models resident; peak_rss_over_baseline_bytes: that peak minus the RSS at the reset "
        "(activations, KV cache, temporaries; approximate, the allocator keeps freed memory)."
    ) + " peak_estimate_bytes: model_bytes + the over-baseline peak."


def measure_speed(dense: nn.Module, pruned: nn.Module, tokenizer=None, *, prompt_len: int = 256,
                  decode_batch: int = 8, new_tokens: int = 64, batch1_new_tokens: int | None = None,
                  repeats: int = 3, warmup: int = 1, device=None, threads: int | None = None, seed: int = 0,
                  prefill_logits: str = "last", generate_check: bool = True, prefill_samples: int = 3) -> dict:
    """Time `dense` and `pruned` side by side in this process; return every figure and the settings.

    `tokenizer` (may be None) only names the special tokens to keep out of the random prompt.
    `device`: where to run (a model on one device is moved there if it is elsewhere); default:
    where each model is (a model spread over several GPUs stays so; prompts go to its input
    embeddings). `threads`: torch CPU threads for the duration.
    `prefill_logits`: "last" (as `generate` does; the head runs once per prompt) or "all".
    `generate_check`: also time `generate` end to end at batch 1 (decode rate by subtraction).
    `prefill_samples`: prefill and TTFT timings per round (each alternated dense, pruned), as a
    prefill is one short call while decode gives a timing per step.
    See the package docstring for what each figure means.
    """
    batch1_new_tokens = new_tokens if batch1_new_tokens is None else batch1_new_tokens
    _check_settings(dense, pruned, prompt_len, decode_batch, new_tokens, batch1_new_tokens, repeats, warmup,
                    prefill_logits, prefill_samples)
    _place((dense, pruned), device)
    requested = prompt_len
    prompt_len, limit = _clip_prompt(dense, pruned, prompt_len, max(new_tokens, batch1_new_tokens))
    prompt, pad = _prompt_and_pad(dense, tokenizer, decode_batch, prompt_len, seed)
    cuda = any(d.startswith("cuda") for model in (dense, pruned) for d in devices_of(model))
    runners = {name: Runner(model, cuda, prompt, decode_batch, new_tokens, batch1_new_tokens, prefill_logits, pad)
               for name, model in (("dense", dense), ("pruned", pruned))}
    load_start = loadavg()
    started = time.perf_counter()
    with quiet(threads), torch.inference_mode():
        runs, memory = _run(runners, cuda, warmup=warmup, repeats=repeats, prefill_samples=prefill_samples,
                            generate_check=generate_check, batch1_new_tokens=batch1_new_tokens,
                            decode_batch=decode_batch)
        used_threads = torch.get_num_threads()

    prefill_mode = "last" if runners["dense"].keep else "all"
    result: dict = {
        "prompt_len": prompt_len, "prompt_len_requested": requested, "prompt_clipped": prompt_len != requested,
        "context_limit": limit, "decode_batch": decode_batch, "new_tokens": new_tokens,
        "batch1_new_tokens": batch1_new_tokens, "repeats": repeats, "prefill_samples": prefill_samples,
        "warmup": warmup, "seed": seed,
        "device": ",".join(devices_of(dense)), "dtype": str(next(dense.parameters()).dtype).replace("torch.", ""),
        "threads": used_threads, "interop_threads": torch.get_num_interop_threads(), "cpu_count": os.cpu_count(),
        "prefill_logits": prefill_mode,
        "decode_method": DECODE_METHOD,
        "ideal_includes_attention": True,
        "loadavg_start": load_start, "loadavg_end": loadavg(), "wall_s": time.perf_counter() - started,
        **versions(),
    }
    steps = {"b1": batch1_new_tokens - 1, "batch": new_tokens - 1}
    batch = {"b1": 1, "batch": decode_batch}
    for name, model in (("dense", dense), ("pruned", pruned)):
        figures = _model_figures(model, runs[name], memory[name], cuda, prompt_len, steps, batch, prefill_mode,
                                 generate_check)
        result.update({f"{name}_{key}": value for key, value in figures.items()})
    add_speedups(result, runs)
    result["memory_note"] = _memory_note(cuda)
    result["runs"] = runs
    return result
