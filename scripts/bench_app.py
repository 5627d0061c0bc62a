"""Benchmark: the demo's own generation (`sleb.demo.engine.stream_generate`), dense against pruned.

    python scripts/bench_app.py                       # SmolLM2 (embedded), SLEB 20%, 64 new tokens, 5 pairs
    python scripts/bench_app.py --ratio 0.3 --repeats 9 --prompt "Write a poem about the sea."

One model in memory, as in the app: the pruned side bypasses its removed blocks through
the app's `BlockSwitch`. The removal order is the app's (zoo, cache, or its own search with
the app's calibration budget). After one warm-up pair (excluded), dense and pruned
alternate `--repeats` times on the same prompt, greedy, with a fixed number of new tokens
(`min_new_tokens` is not used: both sides stop at EOS as in the app, so the prompt should
ask for a long answer). Prints medians per side and the speedups; the last line is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sleb.calibration import CalibrationSpec  # noqa: E402
from sleb.demo import DemoConfig, ModelStore  # noqa: E402
from sleb.demo.engine import GenSettings, blocks_to_remove, encode_prompt, removal_steps, stream_generate  # noqa: E402

log = logging.getLogger("bench_app")
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def generate(entry, ids, removed, settings):
    *_, (text, stats) = stream_generate(entry, ids, removed, settings)
    return text, stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--method", default="sleb")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="dense/pruned pairs after the warm-up pair")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--nsamples", type=int, default=8, help="calibration windows, if the app must search")
    p.add_argument("--seqlen", type=int, default=128)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = DemoConfig(default_model=args.model, calibration=CalibrationSpec(nsamples=args.nsamples,
                                                                              seqlen=args.seqlen))
    store = ModelStore(config)
    entry = store.get(args.model)
    k = blocks_to_remove(entry.num_blocks, args.ratio, None, config.max_ratio)
    *_, last = removal_steps(store, entry, args.method, k, config.calibration)
    removed = last.result.removed(k)
    settings = GenSettings(max_new_tokens=args.new_tokens)
    ids = encode_prompt(entry, args.prompt, config.max_prompt_tokens, args.new_tokens)
    log.info("%s: %d of %d blocks removed by %s (%s): %s", entry.name, k, entry.num_blocks, args.method,
             last.source, removed)

    generate(entry, ids, [], settings)  # warm-up pair, excluded
    generate(entry, ids, removed, settings)
    runs = {"dense": [], "pruned": []}
    for i in range(args.repeats):
        for side, skip in (("dense", []), ("pruned", removed)) if i % 2 == 0 else (("pruned", removed), ("dense", [])):
            _, stats = generate(entry, ids, skip, settings)
            runs[side].append(stats)
            log.info("%-6s run %d: %d tokens, first token %.3f s, decode %.1f tokens/s, total %.2f s", side, i + 1,
                     stats.tokens, stats.ttft_s, stats.decode_tok_s or 0, stats.total_s)

    def median(side, key):
        return statistics.median(getattr(s, key) for s in runs[side])

    figures = {
        "model": entry.name, "method": args.method, "num_blocks": entry.num_blocks, "removed": removed,
        "order_source": last.source, "prompt_tokens": int(ids.shape[1]), "new_tokens": args.new_tokens,
        "repeats": args.repeats, "batch": 1, "dtype": str(next(entry.model.parameters()).dtype),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    for side in runs:
        figures[side] = {"tokens": [s.tokens for s in runs[side]], "ttft_s": round(median(side, "ttft_s"), 4),
                         "decode_tok_s": round(median(side, "decode_tok_s"), 2),
                         "total_s": round(median(side, "total_s"), 3)}
    figures["decode_speedup"] = round(figures["pruned"]["decode_tok_s"] / figures["dense"]["decode_tok_s"], 3)
    figures["ttft_speedup"] = round(figures["dense"]["ttft_s"] / figures["pruned"]["ttft_s"], 3)
    figures["total_speedup"] = round(figures["dense"]["total_s"] / figures["pruned"]["total_s"], 3)
    log.info("median decode: dense %.1f, pruned %.1f tokens/s: speedup %.2fx (first token %.2fx, total %.2fx)",
             figures["dense"]["decode_tok_s"], figures["pruned"]["decode_tok_s"], figures["decode_speedup"],
             figures["ttft_speedup"], figures["total_speedup"])
    print(json.dumps(figures))  # the one machine-readable line


if __name__ == "__main__":
    main()
