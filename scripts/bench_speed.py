"""Benchmark: the dense model against the same model with 20% of its blocks removed, in one process.

    python scripts/bench_speed.py                                  # SmolLM2, blocks 6,10,14,17,18,21 removed
    python scripts/bench_speed.py --threads 1 --repeats 7
    python scripts/bench_speed.py --model Qwen/Qwen2.5-0.5B --ratio 0.25 --device cuda

Loads the model once and deep-copies it; the copy loses the given blocks (by default the
six of SmolLM2's SLEB order at 20%; block identity does not change speed) or, with
`--ratio`, evenly spread middle blocks. Prints `sleb.speed.format_speed`'s table; the last
line is one JSON object with every figure (`sleb.speed.measure_speed`'s result).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sleb.blocks import find_blocks  # noqa: E402
from sleb.loading import load_model  # noqa: E402
from sleb.removal import remove_blocks  # noqa: E402
from sleb.speed import format_speed, measure_speed  # noqa: E402

DEFAULT_BLOCKS = "6,10,14,17,18,21"


def spread_blocks(total: int, ratio: float) -> list[int]:
    """round(ratio x total) block indices spread evenly, never the first or the last block."""
    k = round(ratio * total)
    inner = list(range(1, total - 1))
    return sorted({inner[int((i + 0.5) * len(inner) / k)] for i in range(k)}) if k else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--blocks", default=None, help=f"blocks to remove (default for SmolLM2: {DEFAULT_BLOCKS})")
    p.add_argument("--ratio", type=float, default=None, help="remove round(ratio x blocks), spread evenly")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--decode-batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch1-new-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prefill-samples", type=int, default=3, help="prefill and TTFT timings per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--prefill-logits", choices=["last", "all"], default="last")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    dense, tokenizer, _ = load_model(args.model, device=args.device, dtype=args.dtype)
    total = len(find_blocks(dense).blocks)
    if args.ratio is not None:
        removed = spread_blocks(total, args.ratio)
    else:
        removed = [int(i) for i in (args.blocks or DEFAULT_BLOCKS).split(",")]
    pruned = remove_blocks(copy.deepcopy(dense), removed)

    result = measure_speed(
        dense, pruned, tokenizer, prompt_len=args.prompt_len, decode_batch=args.decode_batch,
        new_tokens=args.new_tokens, batch1_new_tokens=args.batch1_new_tokens, repeats=args.repeats,
        warmup=args.warmup, threads=args.threads, prefill_logits=args.prefill_logits,
        prefill_samples=args.prefill_samples,
    )
    result.update({"model": args.model, "removed_blocks": removed})
    print(format_speed(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
