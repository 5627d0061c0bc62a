"""Benchmark: the fast SLEB search against the plain reference loop, same model, data and dtype.

    python scripts/bench_search.py                       # SmolLM2, 16 x 128-token C4 windows, 3 blocks
    python scripts/bench_search.py --nsamples 32 --num-remove 6 --device cuda

Prints, from one run: wall time of each and their ratio, block forwards of each and
their ratio, peak memory of each, and whether the removal orders match. The last line
is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from sleb.calibration import CalibrationSpec, build_calibration
from sleb.loading import load_model
from sleb.search import fast_search, reference_search

log = logging.getLogger("bench_search")


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set size


def _peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(search, model, windows, args, device):
    _reset_peak(device)
    start = time.perf_counter()
    result = search(model, windows, args.num_remove, batch_size=args.batch_size, progress=not args.quiet)
    seconds = time.perf_counter() - start
    return result, seconds, _peak_mib(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--num-remove", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, tokenizer, source = load_model(args.model, device=args.device, dtype=args.dtype)
    device = str(next(model.parameters()).device)
    calib = build_calibration(tokenizer, CalibrationSpec(nsamples=args.nsamples, seqlen=args.seqlen), model.config)
    model_mib = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20

    with torch.inference_mode():  # warm-up, excluded from the timings
        model(input_ids=calib.windows[: args.batch_size].to(device), use_cache=False)
    ref, ref_s, ref_mem = run(reference_search, model, calib.windows, args, device)
    fast, fast_s, fast_mem = run(fast_search, model, calib.windows, args, device)
    ref_fw = sum(r["block_forwards"] for r in ref.rounds)
    fast_fw = sum(r["block_forwards"] for r in fast.rounds)
    max_rel = max(abs(fast.rounds[i]["score"] - ref.rounds[i]["score"]) / ref.rounds[i]["score"]
                  for i in range(args.num_remove))
    figures = {
        "model": source.name, "device": device, "dtype": str(next(model.parameters()).dtype),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "windows": args.nsamples, "seqlen": args.seqlen, "batch_size": args.batch_size,
        "num_remove": args.num_remove, "model_mib": round(model_mib, 1),
        "reference_s": round(ref_s, 2), "fast_s": round(fast_s, 2), "wall_ratio": round(ref_s / fast_s, 3),
        "reference_block_forwards": ref_fw, "fast_block_forwards": fast_fw,
        "forward_ratio": round(ref_fw / fast_fw, 3),
        "reference_peak_mib": round(ref_mem, 1), "fast_peak_mib": round(fast_mem, 1),
        "reference_order": ref.order, "fast_order": fast.order, "orders_match": ref.order == fast.order,
        "max_relative_score_difference": max_rel,
    }
    log.info("reference: %.1f s, %d block forwards, peak %.0f MiB, order %s", ref_s, ref_fw, ref_mem, ref.order)
    log.info("fast:      %.1f s, %d block forwards, peak %.0f MiB, order %s", fast_s, fast_fw, fast_mem, fast.order)
    log.info("speed-up: %.2fx wall time, %.2fx fewer block forwards; orders match: %s",
             figures["wall_ratio"], figures["forward_ratio"], figures["orders_match"])
    print(json.dumps(figures))  # the one machine-readable line


if __name__ == "__main__":
    main()
