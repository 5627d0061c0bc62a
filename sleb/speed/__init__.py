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

Memory: see `memory`; the ideal speedup (a FLOP ratio): see `flops`.

Modules: `measure` (the benchmark), `runner` (timing one model), `flops` (the ideal
speedup), `memory` (sizes and peaks), `prompts` (the random prompt), `table` (the report).
"""

from .flops import decode_flops, matmul_params, params_flops_per_token, prefill_flops
from .measure import DECODE_METHOD, measure_speed
from .memory import model_bytes
from .prompts import context_limit, random_prompt, special_ids
from .table import FIGURES, format_speed

__all__ = [
    "DECODE_METHOD", "FIGURES", "context_limit", "decode_flops", "format_speed", "matmul_params", "measure_speed",
    "model_bytes", "params_flops_per_token", "prefill_flops", "random_prompt", "special_ids",
]
