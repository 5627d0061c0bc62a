"""Swap refinement on SmolLM2: its picks, their held-out perplexity, and its time beside the greedy search's.

For each ratio, on the CPU default calibration (2,048 C4 tokens in windows of 128): every
criterion's set is scored on the calibration objective; refinement starts from SLEB's set
(`sleb+refine`) and from the best-scoring criterion's set (`--refine all`). Each distinct set
is evaluated with its blocks physically removed (WikiText-2 test and C4 evaluation rows,
32 x 2048 each), cached in the calibration study's folder, which already holds the
criteria's figures. SLEB's greedy time comes from a run here (`--greedy`) or the study's record.

    OMP_NUM_THREADS=1 python scripts/bench_refine.py --ratios 0.2           # resumes from its state
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_refine")
HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--ratios", default="0.2")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--objective", default="nll", choices=("nll", "kl"))
    p.add_argument("--budget", type=int, help="refinement evaluations per seed (default: to a local optimum)")
    p.add_argument("--greedy", action="store_true", help="time SLEB's greedy search here too (else the study's)")
    p.add_argument("--seeds", default="both", choices=("both", "best"),
                   help="refine from the best seed (the default pick) and from SLEB's set, or from the best only")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out perplexities")
    p.add_argument("--study", default="results/calibration-study", help="the calibration study's cache")
    p.add_argument("--out", default="results/refine-study")
    return p.parse_args(argv)


def study_module():
    spec = importlib.util.spec_from_file_location("calibration_study", HERE / "calibration_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeds_for(model, calib, k: int, args, study) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Every criterion's set for k blocks (SLEB's from the study's cache when its calibration matches)."""
    from sleb.criteria import CRITERIA
    from sleb.prune import find_removal

    sets, seconds = {}, {}
    # the study's calibration fingerprint predates hashing the shape: the same tokens hash to either value
    same = {calib.info["fingerprint"], hashlib.sha256(calib.windows.numpy().tobytes()).hexdigest()[:16]}
    for name, criterion in CRITERIA.items():
        if criterion.seeded:
            continue
        cell = study.cell_name(name, args.tokens, args.seqlen)
        cached = study.read_json(Path(args.study) / "searches" / f"{cell}.json")
        if cached and cached["calibration"]["fingerprint"] in same and not (
                name == "sleb" and args.greedy):
            result = study._result(cached)
            seconds[name] = (sum(r["seconds"] for r in result.rounds[:k]) if name == "sleb"
                             else study.search_seconds(cached))
            if name == "sleb":
                seconds["sleb_block_forwards"] = sum(r["block_forwards"] for r in result.rounds[:k])
        else:
            start = time.perf_counter()
            result = find_removal(model, calib, k, name, progress=False)
            seconds[name] = round(time.perf_counter() - start, 1)
        sets[name] = result.removed(k)
    return sets, seconds


def run_ratio(model, tokenizer, calib, k: int, args, study, evaluator) -> dict:
    from sleb.refine import RefineSpec, fast_refine, score_sets
    from sleb.search import SearchState

    sets, seconds = seeds_for(model, calib, k, args, study)
    cache = Path(args.out) / "state" / f"seed-scores-{args.objective}-k{k}-{calib.info['fingerprint']}.json"
    saved = study.read_json(cache) or {}
    if saved.get("sets") != sets:
        start = time.perf_counter()
        saved = {"sets": sets, "scores": score_sets(model, calib.windows, sets, args.objective),
                 "seconds": round(time.perf_counter() - start, 1)}
        study.write_json(cache, saved)
    scores, score_seconds = saved["scores"], saved["seconds"]
    log.info("Seed scores (%s): %s", args.objective, {n: round(v, 2) for n, v in scores.items()})
    spec = RefineSpec(objective=args.objective, budget=args.budget)
    best_seed = min(scores, key=lambda n: (scores[n], n))
    refined, memo = {}, {}  # one memory of scored sets for both seeds: same model, windows and objective
    runs = (("all+refine", best_seed), ("sleb+refine", "sleb"))[: 1 if args.seeds == "best" else 2]
    for label, seed_name in runs:  # the best seed first
        seed = sets[seed_name]
        key = f"{args.objective}-k{k}-{'-'.join(map(str, seed))}-{calib.info['fingerprint']}"
        state = SearchState(Path(args.out) / "state" / f"{key}.json", key)
        log.info("Refining %s's set %s (%s)", seed_name, seed, label)
        record = fast_refine(model, calib.windows, seed, spec=spec, state=state, memo=memo)
        refined[label] = {"seed_method": seed_name, **record}
    row = {"k": k, "criteria": {n: {"removed": sets[n], "score": scores[n], "search_seconds": seconds.get(n)}
                                for n in sets},
           "seed_scoring_seconds": score_seconds, "refined": refined}
    if not args.no_eval:
        for entry in [*row["criteria"].values(), *refined.values()]:
            ev = evaluator.evaluate(entry["removed"])
            entry["wikitext2"] = ev["ppl"]["wikitext2"]["perplexity"]
            entry["c4"] = ev["ppl"]["c4"]["perplexity"]
    return row


def kept_rows(previous: dict | None, args, calibration: dict) -> list[dict]:
    """The rows of an earlier run on the same settings and calibration (other ratios stay in the file)."""
    if not previous or previous.get("calibration", {}).get("fingerprint") != calibration["fingerprint"]:
        return []
    same = {key: value for key, value in previous["settings"].items() if key not in ("ratios", "no_eval")}
    return previous["rows"] if same == {key: value for key, value in vars(args).items() if key in same} else []


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    from sleb.blocks import num_layers
    from sleb.calibration import CalibrationSpec, build_calibration
    from sleb.prune import blocks_for_ratio

    study = study_module()
    evaluator = study.Study(study.parse_args(["--out", args.study, "--dtype", args.dtype, "--zeroshot-limit", "0"]))
    model, tokenizer, _ = evaluator.model()
    calib = build_calibration(tokenizer, CalibrationSpec(source="c4", tokens=args.tokens, seqlen=args.seqlen),
                              model.config)
    out = Path(args.out) / f"refine-{args.objective}-{args.tokens}tok-{args.seqlen}.json"
    kept = kept_rows(study.read_json(out), args, calib.info)
    rows = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        k = blocks_for_ratio(num_layers(model), ratio)
        rows.append({"ratio": ratio, **run_ratio(model, tokenizer, calib, k, args, study, evaluator)})
        merged = sorted([*(r for r in kept if r["ratio"] not in {x["ratio"] for x in rows}), *rows],
                        key=lambda r: r["ratio"])
        settings = {**vars(args), "ratios": ",".join(str(r["ratio"]) for r in merged)}
        study.write_json(out, {"settings": settings, "calibration": calib.info, "rows": merged})
    sys.stdout.write(json.dumps({"rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
