"""Benchmark: the app's own answers (`sleb.demo.engine.stream_generate`), dense against pruned, per engine.

    python scripts/bench_app.py             # SmolLM2 (embedded), SLEB 20%, 64 new tokens, 5 pairs, both engines
    python scripts/bench_app.py --engines torch --ratio 0.3 --prompt "Write a poem about the sea."

The model is loaded once, as in the app; the removal order is the app's (shipped, zoo, cache
or its own search). For each engine (`--engines`, default torch then llama.cpp where the model
is a GGUF): the set-up the app does before its first answer on that engine (torch: nothing, the
blocks are bypassed in the model in memory; llama.cpp: loading the dense GGUF and writing and
loading the pruned one, in a fresh cache folder so the write is counted), then the first
request (dense answer, then pruned), then `--repeats` more pairs alternating which side goes
first. Greedy, the same chat-template token ids on both engines; both sides stop at EOS as in
the app, so the prompt should ask for a long answer. Prints medians per engine and side and
the speedups; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sleb.calibration import CalibrationSpec  # noqa: E402
from sleb.demo import DemoConfig, ModelStore  # noqa: E402
from sleb.demo.engine import GenSettings, blocks_to_remove, encode_prompt, removal_steps, stream_generate  # noqa: E402
from sleb.demo.sides import new_engine  # noqa: E402
from sleb.engines import llamacpp_available  # noqa: E402

log = logging.getLogger("bench_app")
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def answer(entry, ids, engine, settings):
    start = time.perf_counter()
    *_, (text, stats) = stream_generate(entry, ids, settings=settings, engine=engine)
    return text, stats, time.perf_counter() - start


def bench_engine(entry, kind: str, ids, removed, settings, repeats: int) -> dict:
    """Set-up, first request and `repeats` alternated pairs on one engine."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        engines = {"dense": new_engine(entry, [], kind, n_ctx=2048, cache=Path(cache)),
                   "pruned": new_engine(entry, removed, kind, n_ctx=2048, cache=Path(cache))}
        setup_s = time.perf_counter() - start
        first = {}
        for side in ("dense", "pruned"):
            text, stats, wall = answer(entry, ids, engines[side], settings)
            first[side] = {"ttft_s": round(stats.ttft_s, 4), "total_s": round(wall, 3), "tokens": stats.tokens,
                           "text": text}
        runs = {"dense": [], "pruned": []}
        for i in range(repeats):
            for side in ("dense", "pruned") if i % 2 == 0 else ("pruned", "dense"):
                _, stats, _ = answer(entry, ids, engines[side], settings)
                runs[side].append(stats)
                log.info("%-8s %-6s run %d: %d tokens, first token %.3f s, decode %.1f tokens/s, total %.2f s", kind,
                         side, i + 1, stats.tokens, stats.ttft_s, stats.decode_tok_s or 0, stats.total_s)
    figures = {"setup_s": round(setup_s, 3), "first_request": {
        **first, "first_token_s": first["dense"]["ttft_s"],
        "both_answers_s": round(first["dense"]["total_s"] + first["pruned"]["total_s"], 3)}}
    for side, stats in runs.items():
        figures[side] = {"tokens": [s.tokens for s in stats],
                         "ttft_s": round(statistics.median(s.ttft_s for s in stats), 4),
                         "decode_tok_s": round(statistics.median(s.decode_tok_s for s in stats), 2),
                         "total_s": round(statistics.median(s.total_s for s in stats), 3)}
    figures["decode_speedup"] = round(figures["pruned"]["decode_tok_s"] / figures["dense"]["decode_tok_s"], 3)
    figures["ttft_speedup"] = round(figures["dense"]["ttft_s"] / figures["pruned"]["ttft_s"], 3)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--method", help="default: the model's default in the app (sleb/orders/models.json)")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="dense/pruned pairs after the first request")
    p.add_argument("--engines", default="torch,llamacpp", help="comma list of torch, llamacpp")
    p.add_argument("--threads", type=int, help="CPU threads of both engines (default: torch's)")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--nsamples", type=int, default=8, help="calibration windows, if the app must search")
    p.add_argument("--seqlen", type=int, default=128)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)  # llama.cpp takes torch's count (sleb.gguf.verify.default_threads)

    config = DemoConfig(default_model=args.model, calibration=CalibrationSpec(nsamples=args.nsamples,
                                                                              seqlen=args.seqlen), engine="torch")
    store = ModelStore(config)
    args.method = args.method or store.defaults_for(args.model)["method"]
    entry = store.get(args.model)
    k = blocks_to_remove(entry.num_blocks, args.ratio, None, config.max_ratio)
    *_, last = removal_steps(store, entry, args.method, k, config.calibration)
    removed = last.result.removed(k)
    settings = GenSettings(max_new_tokens=args.new_tokens)
    ids = encode_prompt(entry, args.prompt, config.max_prompt_tokens, args.new_tokens)
    log.info("%s: %d of %d blocks removed by %s (%s): %s", entry.name, k, entry.num_blocks, args.method,
             last.source, removed)
    kinds = [e for e in args.engines.split(",") if e != "llamacpp" or (llamacpp_available() and entry.source.gguf_file)]
    figures = {
        "model": entry.name, "method": args.method, "num_blocks": entry.num_blocks, "removed": removed,
        "order_source": last.source, "prompt_tokens": int(ids.shape[1]), "new_tokens": args.new_tokens,
        "repeats": args.repeats, "batch": 1, "torch_dtype": str(next(entry.model.parameters()).dtype),
        "gguf": entry.source.gguf_file, "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()[0],
        "engines": {kind: bench_engine(entry, kind, ids, removed, settings, args.repeats) for kind in kinds},
    }
    figures["load_average_end"] = os.getloadavg()[0]
    for kind, f in figures["engines"].items():
        log.info("%s: set-up %.2f s; first request: first token %.3f s, both answers %.2f s; median decode dense "
                 "%.1f, pruned %.1f tokens/s (speedup %.2fx), first token %.3f / %.3f s", kind, f["setup_s"],
                 f["first_request"]["first_token_s"], f["first_request"]["both_answers_s"],
                 f["dense"]["decode_tok_s"], f["pruned"]["decode_tok_s"], f["decode_speedup"], f["dense"]["ttft_s"],
                 f["pruned"]["ttft_s"])
    print(json.dumps(figures))  # the one machine-readable line


if __name__ == "__main__":
    main()
