"""Calibration study: how much calibration SLEB needs to beat the one-shot criteria.

For each calibration budget (tokens) and window length, SLEB is searched once up to
the largest ratio (its order is nested) and block influence, angular distance and
one-shot perplexity are computed on the same windows. Every distinct set of removed
blocks is evaluated once, with the blocks physically removed from a copy: perplexity
on WikiText-2 test and on the C4 evaluation rows, and zero-shot accuracy on the five
tasks. Calibration is the token-budget protocol on the C4 sample's calibration rows
(consecutive windows, no token used twice), which never overlap any evaluation set.

Hours of CPU: every search and every evaluation is cached under `--out` as soon as it
finishes (SLEB searches also keep their per-round state), so the same command resumes
after an interruption and later runs only add what is missing. `--report` rewrites
`study.json`, `study.md` and `study.png` from the cache without computing anything.

    nice python scripts/calibration_study.py --dtype bfloat16            # run / resume
    python scripts/calibration_study.py --report                         # tables and plot only
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("calibration_study")

METHODS = ("sleb", "block-influence", "angular", "oneshot-ppl")
# The refined picks come from `scripts/bench_refine.py` (its files in --refine-study), which seeds from this study's
# cached sets: `sleb+refine` (the default pick, NLL objective) and `sleb+refine-kl` (KL to the dense model).
REFINED_NAMES = {"nll": "sleb+refine", "kl": "sleb+refine-kl"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (fast on CPUs with AMX) or float32")
    p.add_argument("--budgets", default="2048,4096,8192,16384,32768", help="calibration tokens, comma-separated")
    p.add_argument("--seqlens", default="128,512", help="calibration window lengths, comma-separated")
    p.add_argument("--ratios", default="0.1,0.2,0.3")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ppl-windows", type=int, default=32, help="2048-token windows per perplexity set")
    p.add_argument("--zeroshot-limit", type=int, default=200, help="documents per zero-shot task (0: skip)")
    p.add_argument("--out", default="results/calibration-study")
    p.add_argument("--refine-study", default="results/refine-study",
                   help="scripts/bench_refine.py's results, reported as the refined picks' rows")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the cache")
    p.add_argument("--max-hours", type=float, help="stop starting new work after this long")
    return p.parse_args(argv)


def read_json(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        log.warning("Ignoring unreadable cache file %s", path)
        return None


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def cell_name(method: str, budget: int, seqlen: int) -> str:
    return f"{method}-c4-{budget}tok-{seqlen}"


def removed_key(removed) -> str:
    return "dense" if not removed else "blocks-" + "-".join(str(i) for i in sorted(removed))


class Study:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.budgets = [int(b) for b in args.budgets.split(",")]
        self.seqlens = [int(s) for s in args.seqlens.split(",")]
        self.ratios = [float(r) for r in args.ratios.split(",")]
        self.methods = args.methods.split(",")
        self.deadline = time.time() + 3600 * args.max_hours if args.max_hours else None
        self._model = None

    # -- model and data, loaded on first use -------------------------------------------------
    def model(self):
        if self._model is None:
            import torch

            from sleb.loading import load_model

            torch.manual_seed(0)
            self._model = load_model(self.args.model, device="cpu", dtype=self.args.dtype)
        return self._model

    def counts(self, total: int) -> dict[float, int]:
        from sleb.prune import blocks_for_ratio

        return {r: blocks_for_ratio(total, r) for r in self.ratios}

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    # -- searches ----------------------------------------------------------------------------
    def search(self, method: str, budget: int, seqlen: int) -> dict:
        path = self.out / "searches" / f"{cell_name(method, budget, seqlen)}.json"
        cached = read_json(path)
        if cached:
            return cached
        from sleb.blocks import num_layers
        from sleb.calibration import CalibrationSpec, build_calibration
        from sleb.prune import find_removal

        model, tokenizer, _ = self.model()
        total = num_layers(model)
        calib = build_calibration(tokenizer, CalibrationSpec(source="c4", tokens=budget, seqlen=seqlen), model.config)
        state = self.out / "state" / f"{cell_name(method, budget, seqlen)}.json" if method == "sleb" else None
        log.info("Search %s on %d tokens in windows of %d", method, budget, seqlen)
        start = time.perf_counter()
        result = find_removal(model, calib, max(self.counts(total).values()), method, state_path=state)
        data = {"method": method, "budget": budget, "seqlen": seqlen, "seconds": round(time.perf_counter() - start, 1),
                "result": result.to_dict(), "calibration": calib.info}
        write_json(path, data)
        return data

    # -- evaluations -------------------------------------------------------------------------
    def evaluate(self, removed: list[int]) -> dict:
        """Perplexity (and zero-shot) of the model with `removed` physically removed; cached per block set."""
        from sleb.evaluation.heldout import evaluate_ppl, ppl_text

        path = self.out / "evals" / f"{removed_key(removed)}.json"
        entry = read_json(path) or {"removed": sorted(removed)}
        ppl = entry.setdefault("ppl", {})
        # a cached figure counts only if it was measured on the text evaluated now (same source, same windows)
        missing = [name for name in ("wikitext2", "c4") if name not in ppl or ppl[name]["data"] != ppl_text(name)[1]
                   or ppl[name]["windows"] != self.args.ppl_windows]
        want_zs = self.args.zeroshot_limit > 0 and "zeroshot" not in entry
        if not missing and not want_zs:
            return entry
        from sleb.removal import remove_blocks

        model, tokenizer, _ = self.model()
        pruned = remove_blocks(copy.deepcopy(model), removed) if removed else model
        if missing:
            start = time.perf_counter()
            entry["ppl_dtype"] = self.args.dtype
            ppl.update(evaluate_ppl(pruned, tokenizer, missing, max_windows=self.args.ppl_windows, progress=False))
            entry["ppl_seconds"] = round(time.perf_counter() - start, 1)
            write_json(path, entry)
            log.info("%s: WikiText-2 %.2f, C4 %.2f", removed_key(removed), entry["ppl"]["wikitext2"]["perplexity"],
                     entry["ppl"]["c4"]["perplexity"])
        if want_zs and not self.out_of_time():
            from sleb.evaluation.zeroshot import evaluate_zeroshot

            start = time.perf_counter()
            entry["zeroshot"] = evaluate_zeroshot(pruned, tokenizer, limit=self.args.zeroshot_limit, batch_size=8)
            entry["zeroshot_seconds"] = round(time.perf_counter() - start, 1)
            write_json(path, entry)
            log.info("%s: mean zero-shot acc %.4f", removed_key(removed), mean_acc(entry))
        del pruned
        return entry

    # -- the whole grid ----------------------------------------------------------------------
    def run(self) -> None:
        model, _, _ = self.model()
        from sleb.blocks import num_layers

        counts = self.counts(num_layers(model))
        self.evaluate([])
        for budget in self.budgets:  # cheapest first, so a cut-short run still covers every method
            for seqlen in self.seqlens:
                for method in self.methods:
                    if self.out_of_time():
                        log.info("Out of time; rerun the same command to continue.")
                        return
                    data = self.search(method, budget, seqlen)
                    result = _result(data)
                    for k in counts.values():
                        self.evaluate(result.removed(k))
                self.report()

    # -- report ------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        rows = []
        dense = read_json(self.out / "evals" / "dense.json")
        for path in sorted((self.out / "searches").glob("*.json")):
            data = read_json(path)
            if not data:
                continue
            result = _result(data)
            total = result.num_blocks
            for ratio, k in self.counts(total).items():
                if k > result.max_remove:
                    continue
                removed = result.removed(k)
                ev = read_json(self.out / "evals" / f"{removed_key(removed)}.json") or {}
                rows.append({
                    "method": data["method"], "budget": data["budget"], "seqlen": data["seqlen"], "ratio": ratio,
                    "blocks": k, "removed": removed, "search_seconds": search_seconds(data),
                    "wikitext2": _ppl(ev, "wikitext2"), "c4": _ppl(ev, "c4"),
                    "zeroshot": mean_acc(ev) if "zeroshot" in ev else None,
                })
        return [{"dense": {"wikitext2": _ppl(dense, "wikitext2"), "c4": _ppl(dense, "c4"),
                           "zeroshot": mean_acc(dense) if dense and "zeroshot" in dense else None}}] + rows \
            + self.refined_rows()

    def refined_rows(self) -> list[dict]:
        """One row per refined pick in bench_refine's files: its set (the best seed refined), held-out figures from
        this study's evaluation cache, and its time: SLEB's greedy rounds, scoring the seeds and the refinement."""
        rows = []
        for path in sorted(Path(self.args.refine_study).glob("refine-*tok-*.json")):
            data = read_json(path)
            if not data:
                continue
            settings = data["settings"]
            for row in data["rows"]:
                pick = row["refined"].get("all+refine")
                if pick is None or row["ratio"] not in self.ratios:
                    continue
                ev = read_json(self.out / "evals" / f"{removed_key(pick['removed'])}.json") or {}
                greedy = (row["criteria"].get("sleb") or {}).get("search_seconds") or 0
                how = f"{settings['dtype']} refinement" if pick.get("local_optimum") is not None else \
                    f"best seed on the {settings['dtype']} objective, not refined"
                rows.append({
                    "method": f"{REFINED_NAMES[settings['objective']]} ({how})",
                    "budget": settings["tokens"], "seqlen": settings["seqlen"], "ratio": row["ratio"],
                    "blocks": row["k"], "removed": pick["removed"],
                    "search_seconds": round(greedy + row["seed_scoring_seconds"] + pick.get("seconds", 0), 1),
                    "wikitext2": _ppl(ev, "wikitext2"), "c4": _ppl(ev, "c4"),
                    "zeroshot": mean_acc(ev) if "zeroshot" in ev else None,
                })
        return rows

    def report(self) -> None:
        rows = self.rows()
        dense, rows = rows[0]["dense"], rows[1:]
        write_json(self.out / "study.json", {"settings": vars(self.args), "dense": dense, "rows": rows})
        (self.out / "study.md").write_text(markdown(dense, rows, self.args))
        if rows:
            plot(dense, rows, self.out / "study.png")
        log.info("Wrote %s", self.out / "study.md")


def _result(data: dict):
    from sleb.search import SearchResult

    return SearchResult.from_dict(data["result"])


def search_seconds(data: dict) -> float:
    """A search's time: SLEB's rounds summed (a resumed search's wall time covers only its last rounds)."""
    rounds = data["result"].get("rounds") or []
    if rounds and all("seconds" in r for r in rounds):
        return round(sum(r["seconds"] for r in rounds), 1)
    return data["seconds"]


def _ppl(entry, name):
    return entry["ppl"][name]["perplexity"] if entry and "ppl" in entry else None


def mean_acc(entry) -> float:
    accs = [v["acc"] for v in entry["zeroshot"].values()]
    return sum(accs) / len(accs)


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _best(row: dict, cell: list[dict], key: str, digits: int) -> str:
    """The row's figure, in bold when it is the best of its calibration cell (lowest perplexity, highest accuracy)."""
    value = row[key]
    values = [x[key] for x in cell if x[key] is not None]
    if value is None:
        return _fmt(value, digits)
    best = max(values) if key == "zeroshot" else min(values)
    return f"**{_fmt(value, digits)}**" if len(values) > 1 and value == best else _fmt(value, digits)


def markdown(dense: dict, rows: list[dict], args) -> str:
    lines = [
        "# Calibration study: SLEB vs one-shot criteria on SmolLM2-135M-Instruct", "",
        "Calibration: consecutive windows from the C4 sample's calibration rows (token-budget protocol). "
        f"Evaluation: perplexity on the first {args.ppl_windows} windows of 2048 tokens of WikiText-2 test "
        "(Hub rows joined with \"\\n\\n\") and of the C4 evaluation rows (0-1099); zero-shot: mean accuracy over "
        "PIQA, WinoGrande, HellaSwag, ARC-e, ARC-c, first 200 documents each (stock lm-eval; `-`: not yet "
        "measured). "
        "Bold: the best figure of its calibration cell. "
        f"dtype {args.dtype}. Made by `python scripts/calibration_study.py` (see the script's docstring). "
        "Rows `sleb+refine` (the default pick: the best of these sets on the calibration NLL, swap-refined) and "
        "`sleb+refine-kl` (the same on the KL to the dense model) come from `scripts/bench_refine.py`, which seeds "
        "from this study's sets and refines in the dtype it names; their search time adds SLEB's greedy rounds, "
        "scoring the seeds and the refinement.", "",
        f"Dense: WikiText-2 {_fmt(dense['wikitext2'])}, C4 {_fmt(dense['c4'])}, "
        f"zero-shot {_fmt(dense['zeroshot'], 4)}.", "",
    ]
    for ratio in sorted({r["ratio"] for r in rows}):
        sub = [r for r in rows if r["ratio"] == ratio]
        lines += [f"## {ratio:.0%} removed ({sub[0]['blocks']} blocks)", "",
                  "| calibration | method | removed | WikiText-2 | C4 | zero-shot | search s |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(sub, key=lambda r: (r["budget"], r["seqlen"], r["method"])):
            cell = [x for x in sub if x["budget"] == r["budget"] and x["seqlen"] == r["seqlen"]]
            wt, c4, zs = (_best(r, cell, key, digits) for key, digits in (("wikitext2", 2), ("c4", 2), ("zeroshot", 4)))
            lines.append(f"| {r['budget']} tok x {r['seqlen']} | {r['method']} | {r['removed']} | "
                         f"{wt} | {c4} | {zs} | {_fmt(r['search_seconds'], 0)} |")
        lines.append("")
    return "\n".join(lines)


def plot(dense: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({r["ratio"] for r in rows})
    metrics = [("wikitext2", "WikiText-2 ppl", True), ("c4", "C4 ppl", True), ("zeroshot", "zero-shot acc", False)]
    fig, axes = plt.subplots(len(metrics), len(ratios), figsize=(4.2 * len(ratios), 3.2 * len(metrics)),
                             squeeze=False)
    for col, ratio in enumerate(ratios):
        for row, (key, label, log_scale) in enumerate(metrics):
            ax = axes[row][col]
            for index, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
                color = f"C{index}"  # one colour per method
                for seqlen, (style, marker) in zip(sorted({r["seqlen"] for r in rows}),
                                                   (("-", "o"), ("--", "s"), (":", "^")), strict=False):
                    pts = sorted((r["budget"], r[key]) for r in rows if r["ratio"] == ratio and r["method"] == method
                                 and r["seqlen"] == seqlen and r[key] is not None)
                    if pts:
                        ax.plot(*zip(*pts, strict=True), style, color=color, marker=marker,
                                label=f"{method}, windows of {seqlen}")
            if dense.get(key) is not None:
                ax.axhline(dense[key], color="k", lw=0.8, label="dense")
            ax.set_xscale("log", base=2)
            if log_scale:
                ax.set_yscale("log")
            ax.set(title=f"{ratio:.0%} removed", xlabel="calibration tokens", ylabel=label)
    labels = {}
    for ax in axes.flat:  # one legend for the figure, below it, from every panel's lines
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(label, handle)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(labels.values(), labels.keys(), loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    study = Study(args)
    if not args.report:
        study.run()
    study.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())

