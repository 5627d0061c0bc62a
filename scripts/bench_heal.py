"""Benchmark healing: dense vs pruned vs linear-, distill- and linear+distill-healed, in stages that resume.

    nice python scripts/bench_heal.py                                 # SmolLM2, SLEB's 20% order
    python scripts/bench_heal.py --ppl-windows 32 --limit 200 --distill-tokens 65536
    python scripts/bench_heal.py --blocks 14,17,18,16,5,13 --out results/bench_heal.json

Every stage (one healing, or one evaluation of one variant) is written to the result file as
soon as it ends and skipped when run again; healed checkpoints are kept in --work. Perplexity
uses `sleb.evaluation.heldout` (WikiText-2 test and the C4 evaluation rows, windows of 2048 tokens),
zero-shot `sleb.evaluation.zeroshot` (the five tasks, --limit documents each). Healing time and peak
memory (the process's resident-set high-water mark, reset before each healing) are measured
per healing, with the CPU time (all threads) and the load average, since the machine may be
shared. Each variant is healed, then its perplexity measured; zero-shot runs last for all of
them. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sleb.evaluation.heldout import evaluate_ppl  # noqa: E402
from sleb.evaluation.zeroshot import ZEROSHOT_TASKS, evaluate_zeroshot  # noqa: E402
from sleb.healing import DistillSpec, HealSpec, heal_model  # noqa: E402
from sleb.loading import cache_dir, load_model  # noqa: E402
from sleb.removal import remove_blocks, save_checkpoint  # noqa: E402

log = logging.getLogger("bench_heal")
# The shipped SLEB order's first 6 of SmolLM2's 30 blocks (sleb/orders: 2,048 C4 calibration tokens, seed 0).
DEFAULT_BLOCKS = "17,18,16,5,14,15"
VARIANTS = ("dense", "pruned", "linear", "distill", "linear+distill")


def reset_peak() -> None:
    """Reset the kernel's resident-set high-water mark of this process (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def recovered(dense: float, pruned: float, healed: float) -> float:
    """Share of the log-perplexity gap closed: 1 - (log h - log d) / (log p - log d)."""
    return 1 - (math.log(healed) - math.log(dense)) / (math.log(pruned) - math.log(dense))


def summary(results: dict) -> dict:
    out = {}
    ev = results.get("eval", {})
    for name in VARIANTS[2:]:
        row = {}
        for ppl_set in ("wikitext2", "c4"):
            try:
                d, p, h = (ev[v]["ppl"][ppl_set]["perplexity"] for v in ("dense", "pruned", name))
                row[f"{ppl_set}_recovered"] = round(recovered(d, p, h), 4)
            except KeyError:
                pass
        try:
            d, p, h = (ev[v]["zeroshot_mean"] for v in ("dense", "pruned", name))
            row["zeroshot_recovered"] = round((h - p) / (d - p), 4) if d != p else None
        except KeyError:
            pass
        out[name] = row
    return out


def heal_variant(args, name: str, removed: list[int], folder: Path, results: dict) -> None:
    """Heal a fresh pruned copy with the variant's steps; time it, measure peak memory, save the checkpoint."""
    dense, tokenizer, _ = load_model(args.model, device="cpu", dtype="float32")
    spec = HealSpec(methods=tuple(name.split("+")), source=args.heal_source, seqlen=args.heal_seqlen,
                    linear_tokens=args.linear_tokens,
                    distill=DistillSpec(tokens=args.distill_tokens, lr=args.lr, dtype=args.heal_dtype,
                                        lm_weight=args.lm_weight,
                                        batch_windows=args.batch, lora_rank=args.lora_rank,
                                        lora_alpha=2 * args.lora_rank))
    pruned = remove_blocks(load_model(args.model, device="cpu", dtype="float32")[0], removed)
    reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    healed, record = heal_model(dense, pruned, tokenizer, removed, spec)
    seconds = time.perf_counter() - start
    results["heal"][name] = {"seconds": round(seconds, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
                             "peak_rss_mb": peak_mb(),
                             "load_average": os.getloadavg(), "record": record}
    save_checkpoint(healed, tokenizer, folder, {"healing": record}, overwrite=True)
    log.info("%s healed in %.1f s, peak RSS %s MB", name, seconds, peak_mb())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--blocks", default=DEFAULT_BLOCKS, help="removed blocks (original indices)")
    p.add_argument("--ppl-windows", type=int, default=32, help="perplexity windows of 2048 per set")
    p.add_argument("--limit", type=int, default=1000, help="zero-shot documents per task (0: skip zero-shot)")
    p.add_argument("--eval-dtype", default="bf16", help="dtype for evaluation (bf16 or float32)")
    p.add_argument("--linear-tokens", type=int, default=16384)
    p.add_argument("--distill-tokens", type=int, default=DistillSpec.tokens)
    p.add_argument("--heal-seqlen", type=int, default=512)
    p.add_argument("--heal-dtype", default="bf16")
    p.add_argument("--lr", type=float, default=DistillSpec.lr)
    p.add_argument("--batch", type=int, default=DistillSpec.batch_windows, help="windows per optimizer step")
    p.add_argument("--lora-rank", type=int, default=DistillSpec.lora_rank)
    p.add_argument("--heal-source", default=HealSpec.source, help="healing text: c4, wikitext2 or a .txt/.jsonl file")
    p.add_argument("--lm-weight", type=float, default=DistillSpec.lm_weight, help="weight of the next-token loss")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="results/bench_heal.json")
    p.add_argument("--work", default=str(cache_dir() / "bench_heal"), help="folder for healed checkpoints")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    removed = [int(b) for b in args.blocks.split(",")]
    variants = args.variants.split(",")
    results = load_results(out)
    settings = dict(
        model=args.model, removed=removed, ppl_windows=args.ppl_windows, limit=args.limit,
        eval_dtype=args.eval_dtype, linear_tokens=args.linear_tokens, distill_tokens=args.distill_tokens,
        heal_seqlen=args.heal_seqlen, heal_dtype=args.heal_dtype, lr=args.lr, batch=args.batch,
        lora_rank=args.lora_rank, heal_source=args.heal_source, lm_weight=args.lm_weight,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count())
    saved = {"heal_source": "c4", "lm_weight": 0.0,  # what files from before these options were made with
             **results.get("settings", settings)}
    old = {k: v for k, v in saved.items() if k not in ("limit", "threads")}
    if old != {k: v for k, v in settings.items() if k not in ("limit", "threads")}:  # zero-shot may be added later
        log.warning("%s holds results of other settings; starting it again.", out)
        results = {}
    results["settings"] = settings
    results.setdefault("heal", {})
    results.setdefault("eval", {})

    tokenizer = load_model(args.model, device="cpu", dtype="float32")[1]

    def model_of(name):
        dtype = "bfloat16" if args.eval_dtype in ("bf16", "bfloat16") else "float32"
        if name == "dense":
            return load_model(args.model, device="cpu", dtype=dtype)[0]
        if name == "pruned":
            return remove_blocks(load_model(args.model, device="cpu", dtype=dtype)[0], removed)
        return load_model(str(work / name.replace("+", "-")), device="cpu", dtype=dtype)[0]

    for name in variants:  # heal (if a healed variant), then perplexity; zero-shot for all at the end
        folder = work / name.replace("+", "-")
        if name not in ("dense", "pruned") and not (name in results["heal"] and (folder / "config.json").is_file()):
            heal_variant(args, name, removed, folder, results)
            save_results(out, results)
        row = results["eval"].setdefault(name, {})
        if "ppl" not in row:
            start, cpu = time.perf_counter(), time.process_time()
            row["ppl"] = evaluate_ppl(model_of(name), tokenizer, ["wikitext2", "c4"], 2048, args.ppl_windows)
            row["ppl_seconds"] = round(time.perf_counter() - start, 1)
            row["ppl_cpu_seconds"] = round(time.process_time() - cpu, 1)
            row["ppl_load_average"] = os.getloadavg()
            save_results(out, results)
    for name in variants if args.limit else []:
        row = results["eval"][name]
        if row.get("zeroshot_limit") != args.limit:
            start = time.perf_counter()
            row["zeroshot"] = evaluate_zeroshot(model_of(name), tokenizer, ZEROSHOT_TASKS, limit=args.limit,
                                              batch_size=8)
            row["zeroshot_limit"] = args.limit
            row["zeroshot_mean"] = sum(v["acc"] for v in row["zeroshot"].values()) / len(row["zeroshot"])
            row["zeroshot_seconds"] = round(time.perf_counter() - start, 1)
            save_results(out, results)
    results["summary"] = summary(results)
    save_results(out, results)
    print(json.dumps({"summary": results["summary"],
                      "ppl": {k: {s: round(v["perplexity"], 3) for s, v in r.get("ppl", {}).items()}
                              for k, r in results["eval"].items()},
                      "zeroshot_mean": {k: r.get("zeroshot_mean") for k, r in results["eval"].items()},
                      "heal": {k: {"seconds": v["seconds"], "cpu_seconds": v["cpu_seconds"],
                                   "peak_rss_mb": v["peak_rss_mb"]}
                               for k, v in results["heal"].items()}}))


if __name__ == "__main__":
    main()
