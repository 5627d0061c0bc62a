"""Compare SLEB with the baselines on one base model: same calibration, same evaluation.

For every method the removal is found once (up to the largest ratio) and each ratio is
evaluated by bypassing the chosen blocks with `BlockSwitch`, which gives the same
logits as removing them (the architecture tests check this), so one model serves all.
Writes `compare.json`, a markdown table `compare.md` and plots (perplexity vs ratio per
method; ideal and, with `speed=True`, measured speedup vs ratio).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

from .blocks import BlockSwitch, find_blocks, num_layers
from .calibration import CalibrationSpec, build_calibration
from .criteria import CRITERIA, DEFAULT_METHOD, is_nested, method_label
from .evaluation.heldout import evaluate_ppl
from .loading import load_model
from .prune import blocks_for_ratio, choose, versions
from .removal import remove_blocks

log = logging.getLogger(__name__)

DEFAULT_METHODS = (DEFAULT_METHOD, *(name for name, c in CRITERIA.items() if not c.seeded))


def _evaluate(model, tokenizer, ppl, zeroshot, opts) -> dict:
    out = {"ppl": evaluate_ppl(model, tokenizer, ppl, opts["seqlen"], opts["max_windows"], data_root=opts["data_dir"],
                               progress=opts["progress"])}
    if zeroshot:
        from .evaluation.zeroshot import evaluate_zeroshot

        out["zeroshot"] = evaluate_zeroshot(model, tokenizer, zeroshot, limit=opts["limit"], data_dir=opts["data_dir"])
    return out


def compare(model: str | None = "default", ratios=(0.1, 0.2, 0.3), methods=None,
            calibration: CalibrationSpec | None = None, ppl=("wikitext2",), zeroshot=(),
            out: str | os.PathLike = "results/compare", seqlen: int = 2048, max_windows: int | None = None,
            limit: int | None = None, speed: bool = False, data_dir=None, device="auto", dtype=None,
            progress: bool = True) -> dict:
    """Run the comparison and write its report to `out`; returns the report's data.

    `methods`: registry names (`sleb.criteria`) or the default pick 'sleb+refine'; default: the default pick and
    every criterion but random.
    """
    from .speed import matmul_params, params_flops_per_token

    loaded, tokenizer, source = load_model(model, device=device, dtype=dtype)
    total = num_layers(loaded)
    counts = {r: blocks_for_ratio(total, r) for r in ratios}
    calib = build_calibration(tokenizer, calibration or CalibrationSpec(), loaded.config)
    opts = {"seqlen": seqlen, "max_windows": max_windows, "limit": limit, "data_dir": data_dir, "progress": progress}
    report = {"model": source.base_model or source.name, "num_blocks": total, "ratios": list(ratios),
              "counts": list(counts.values()), "calibration": calib.info, "versions": versions(),
              "evaluation": {"seqlen": seqlen, "max_windows": max_windows, "zeroshot_limit": limit,
                             "how": "blocks bypassed with BlockSwitch (same logits as removing them)"},
              "dense": _evaluate(loaded, tokenizer, ppl, zeroshot, opts), "methods": {}, "speed": {}}
    blocks = find_blocks(loaded).blocks
    for method in methods or DEFAULT_METHODS:
        result = choose(loaded, tokenizer, calib, sorted(set(counts.values())), method, progress=progress)
        rows = {}
        for ratio, k in counts.items():
            removed = result.removed(k)
            with BlockSwitch(blocks) as switch, switch.state(skip=removed):
                rows[str(ratio)] = {"removed": removed, **_evaluate(loaded, tokenizer, ppl, zeroshot, opts)}
        report["methods"][method] = {"label": method_label(method), "nested": is_nested(method),
                                     "order": result.order, "results": rows}
    dense_counts = matmul_params(loaded)
    for ratio, k in counts.items():
        gone = list(range(1, k + 1))  # speed depends on how many blocks go, not which
        pruned_counts = {**dense_counts, "num_blocks": total - k, "blocks": dense_counts["blocks"] - sum(
            p.numel() for i in gone for p in blocks[i].parameters() if p.dim() >= 2)}
        # per-token compute of blocks, other matmuls and the head; no copy of the model needed
        entry = {"ideal": params_flops_per_token(dense_counts) / params_flops_per_token(pruned_counts)}
        if speed:
            from .speed import measure_speed

            pruned = remove_blocks(copy.deepcopy(loaded), gone)
            entry["measured"] = measure_speed(loaded, pruned, tokenizer)
            del pruned
        report["speed"][str(ratio)] = entry
    write_report(report, Path(out))
    return report


def _ppl_table(report: dict) -> str:
    sets = list(report["dense"]["ppl"])
    ratios = [str(r) for r in report["ratios"]]
    head = ["method"] + [f"{s} @ {float(r):.0%}" for s in sets for r in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense = [f"{report['dense']['ppl'][s]['perplexity']:.2f}" for s in sets for _ in ratios]
    lines.append("| dense | " + " | ".join(dense) + " |")
    for method, data in report["methods"].items():
        cells = []
        for s in sets:
            values = {r: data["results"][r]["ppl"][s]["perplexity"] for r in ratios}
            best = {r: min(m["results"][r]["ppl"][s]["perplexity"] for m in report["methods"].values()) for r in ratios}
            cells += [f"**{values[r]:.2f}**" if values[r] == best[r] else f"{values[r]:.2f}" for r in ratios]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _zeroshot_table(report: dict) -> str:
    if "zeroshot" not in report["dense"]:
        return ""
    tasks = list(report["dense"]["zeroshot"])
    lines = ["| method | ratio | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 2)]
    lines.append("| dense | 0 | " + " | ".join(f"{report['dense']['zeroshot'][t]['acc']:.3f}" for t in tasks) + " |")
    for method, data in report["methods"].items():
        for ratio, row in data["results"].items():
            lines.append(f"| {method} | {float(ratio):.0%} | "
                         + " | ".join(f"{row['zeroshot'][t]['acc']:.3f}" for t in tasks) + " |")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    """compare.json, compare.md and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = plot_report(report, out)
    speed_lines = [f"| {float(r):.0%} | {e['ideal']:.3f}x | "
                   + (f"{e['measured']['speedup_prefill']:.3f}x | {e['measured']['speedup_decode_b1']:.3f}x |"
                      if "measured" in e else "- | - |") for r, e in report["speed"].items()]
    cal = report["calibration"]
    text = [
        f"# SLEB vs baselines on {report['model']} ({report['num_blocks']} blocks)", "",
        f"Calibration: {cal['num_windows']} windows x {cal['seqlen']} tokens from {cal['data']} "
        f"(seed {cal['seed']}), the same for every method. Perplexity: non-overlapping windows of "
        f"{report['evaluation']['seqlen']} tokens (at most {report['evaluation']['max_windows'] or 'all'} per set). "
        "Lower is better; the best method at each ratio is in bold.", "",
        _ppl_table(report), "", _zeroshot_table(report), "",
        "| ratio | ideal speedup (per-token compute) | measured prefill | measured decode (batch 1) |",
        "|---|---|---|---|", *speed_lines, "",
        *[f"![{p.stem}]({p.name})" for p in plots], "",
    ]
    (out / "compare.md").write_text("\n".join(text))
    log.info("Wrote %s", out / "compare.md")


def plot_report(report: dict, out: Path) -> list[Path]:
    """Perplexity vs ratio per method for each set, and speedup vs ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ratios = [float(r) for r in report["ratios"]]
    for name, dense in report["dense"]["ppl"].items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, data in report["methods"].items():
            values = [dense["perplexity"]] + [data["results"][str(r)]["ppl"][name]["perplexity"]
                                             for r in report["ratios"]]
            ax.plot([0.0] + ratios, values, marker="o", label=data.get("label", method))
        ax.set(xlabel="share of blocks removed", ylabel=f"{name} perplexity", yscale="log",
               title=f"{report['model']}: {name} perplexity vs removal ratio")
        ax.legend()
        fig.tight_layout()
        paths.append(out / f"ppl_{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    speed = report["speed"]
    ax.plot([0.0] + ratios, [1.0] + [speed[str(r)]["ideal"] for r in report["ratios"]], "k--",
            marker="o", label="ideal (compute removed)")
    if all("measured" in speed[str(r)] for r in report["ratios"]):
        for key in ("prefill", "decode_b1"):
            ax.plot([0.0] + ratios, [1.0] + [speed[str(r)]["measured"][f"speedup_{key}"] for r in report["ratios"]],
                    marker="o", label=f"measured {key}")
    ax.set(xlabel="share of blocks removed", ylabel="speedup (x)", title=f"{report['model']}: speedup vs ratio")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "speedup.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
