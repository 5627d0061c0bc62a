"""Does bf16 pick the same removal sets as fp32? The candidate sets of each ratio, scored in both.

For each block count in a refinement study's file (`scripts/bench_refine.py` output: every
criterion's set and the refined picks on the same calibration), every distinct candidate set
is scored on the calibration objective (summed NLL of the windows, blocks bypassed) with the
model loaded in fp32 and in bf16. The pick is the lowest score; the script prints, per count,
each dtype's ranking, whether the picks agree, and the margin between the two best sets next
to the rounding the dtype itself adds (|bf16 - fp32| of the dense model's score).

    OMP_NUM_THREADS=1 python scripts/bench_dtype_picks.py --top 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("bench_dtype_picks")
PICK_NAMES = {"all+refine": "default pick", "sleb+refine": "refined from SLEB's"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--sets", default="results/refine-study/refine-nll-2048tok-128.json")
    p.add_argument("--top", type=int, help="score only the N best sets per count by the study file's scores")
    p.add_argument("--out", default="results/refine-study/dtype-picks.json")
    return p.parse_args(argv)


def candidates(study: dict, top: int | None = None) -> dict[int, dict[str, list[int]]]:
    """Per block count, the distinct sets to score, named by who proposed them (criteria, then refined picks);
    with `top`, only the `top` best by the study file's own scores."""
    out = {}
    for row in study["rows"]:
        named = {**{n: (v["removed"], v["score"]) for n, v in row["criteria"].items() if n != "last"},
                 **{n: (v["removed"], v["score"]) for n, v in row["refined"].items()}}
        distinct, score = {}, {}
        for name, (blocks, value) in named.items():
            key = tuple(sorted(blocks))
            distinct.setdefault(key, []).append(name)
            score[key] = value
        keep = sorted(distinct, key=score.get)[:top] if top else list(distinct)
        out[row["k"]] = {" = ".join(PICK_NAMES.get(n, n) for n in distinct[key]): list(key) for key in keep}
    return out


def scores_in(model, windows, sets_by_k: dict) -> tuple[dict, float, float]:
    """Every set's summed NLL with `model`, the dense score, and the seconds it took."""
    import torch

    from sleb.refine import score_sets

    start = time.perf_counter()
    with torch.inference_mode():
        dense = score_sets(model, windows, {"dense": []})["dense"]
        scores = {k: score_sets(model, windows, sets) for k, sets in sets_by_k.items()}
    return scores, dense, round(time.perf_counter() - start, 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from sleb.calibration import CalibrationSpec, build_calibration
    from sleb.loading import load_model

    torch.set_num_threads(1)
    study = json.loads(Path(args.sets).read_text())
    sets_by_k = candidates(study, args.top)
    info = study["calibration"]
    per_dtype, calib = {}, None
    for dtype in ("float32", "bfloat16"):
        model, tokenizer, _ = load_model(args.model, device="cpu", dtype=dtype)
        calib = calib or build_calibration(tokenizer, CalibrationSpec(source="c4", tokens=info["num_tokens"],
                                                                      seqlen=info["seqlen"]), model.config)
        per_dtype[dtype] = scores_in(model, calib.windows, sets_by_k)
        del model
        log.info("%s: scored in %.0f s", dtype, per_dtype[dtype][2])
    result = {"calibration": calib.info, "counts": {}}
    rounding = abs(per_dtype["bfloat16"][1] - per_dtype["float32"][1])
    for k, sets in sets_by_k.items():
        row = {}
        for dtype, (scores, _, _) in per_dtype.items():
            ranked = sorted(scores[k], key=lambda n: scores[k][n])
            row[dtype] = {"ranking": ranked, "scores": {n: round(scores[k][n], 2) for n in ranked},
                          "pick": sets[ranked[0]],
                          "margin": round(scores[k][ranked[1]] - scores[k][ranked[0]], 2) if len(ranked) > 1 else None}
        row["same_pick"] = sorted(row["float32"]["pick"]) == sorted(row["bfloat16"]["pick"])
        row["same_ranking"] = row["float32"]["ranking"] == row["bfloat16"]["ranking"]
        result["counts"][str(k)] = row
        log.info("%d blocks: fp32 picks %s (margin %.2f), bf16 picks %s (margin %.2f): %s", k,
                 row["float32"]["pick"], row["float32"]["margin"] or 0, row["bfloat16"]["pick"],
                 row["bfloat16"]["margin"] or 0, "same" if row["same_pick"] else "DIFFERENT")
    result["dense"] = {d: round(v[1], 2) for d, v in per_dtype.items()}
    result["dense_rounding"] = round(rounding, 2)
    result["seconds"] = {d: v[2] for d, v in per_dtype.items()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
