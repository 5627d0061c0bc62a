"""What the demo shows about a pruning: the block stack with removed blocks in removal order, each round's
score, and a dense-vs-pruned table of speed, size and perplexity."""

from __future__ import annotations

import textwrap
from dataclasses import replace

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..criteria import CRITERIA, base_method
from ..search import SearchResult

KEPT, REMOVED, BARRIER = "#cfe3f7", "#e4572e", "#d9d9d9"
ENGINE_LABELS = {"torch": "transformers (torch)", "llamacpp": "llama.cpp (GGUF)"}


def _calibration_tokens(result: SearchResult) -> int:
    calib = result.settings.get("calibration") or {}
    return int(calib.get("num_windows") or 0) * max(0, int(calib.get("seqlen") or 0) - 1)


def refine_record(result: SearchResult | None, k: int) -> dict | None:
    """What the refinement did for `k` blocks (`settings["refine"][str(k)]` of a refined result), else None."""
    return ((result.settings.get("refine") or {}).get(str(k)) if result is not None else None) or None


def seed_search(result: SearchResult) -> SearchResult:
    """The search a refined result started from (SLEB's greedy: its rounds and order); a result of its own."""
    if not result.settings.get("refine"):
        return result
    return replace(result, method=base_method(result.method), by_count=None,
                   order=list(result.settings.get("seed_order") or []))


def refine_note(result: SearchResult | None, k: int) -> str:
    """In words: which set a refined result removes for `k` blocks, from which seed, by which swaps ("" if none)."""
    record = refine_record(result, k)
    if record is None:
        return ""
    scores = record.get("seed_scores") or {}
    seeds = ", ".join(f"{name} {value:,.2f}" for name, value in sorted(scores.items(), key=lambda kv: kv[1]))
    swaps = record.get("swaps") or []
    steps = "; ".join(f"block {s['in']} back in, {s['out']} out ({s['score']:,.2f})" for s in swaps)
    optimum = (" no single swap lowers it (a swap-local optimum)" if record.get("local_optimum")
               else " stopped by its budget" if record.get("local_optimum") is False else "")
    score, seed = record.get("score"), seed_search(result)
    objective = record.get("objective", "nll").upper()
    origin = (f", from {record['seed_method']}'s set {sorted(record.get('seed') or [])}"
              if record.get("seed_method") else "")
    return (f"**Refined pick for {k} blocks: {sorted(result.removed(k))}**{origin}"
            + (f" (the best seed on the calibration {objective}: {seeds})" if seeds else "")
            + f"; {len(swaps)} swap(s) taken{': ' + steps if steps else ''}"
            + (f"; {objective} {score:,.2f}," if score is not None else ";") + f"{optimum}."
            + (f" {seed.method}'s own set was {sorted(seed.order[:k])}; the plot shows its rounds."
               if result.rounds and seed.covers(k) else ""))


def round_scores(result: SearchResult, k: int) -> list[float]:
    """One score per removed block, in removal order; empty for methods without scores (last, random). A refined
    result's are its seed search's (SLEB's greedy rounds), in that search's order."""
    result = seed_search(result)
    criterion = CRITERIA.get(result.method)
    values = criterion.scores(result, k) if criterion and result.covers(k) else []
    tokens = _calibration_tokens(result)
    if criterion and criterion.per_token and tokens:
        values = [v / tokens for v in values]
    return values


def removal_figure(result: SearchResult | None, k: int, num_blocks: int, barriers: tuple[int, int] = (1, 1),
                   title: str = "") -> Figure:
    """The block stack (removed blocks numbered in removal order) over a plot of each round's score.

    A refined set has no removal order: its blocks are not numbered, and the plot shows the rounds of the
    search it started from (SLEB's greedy), annotated with that search's blocks."""
    order = result.removed(k) if result and k else []
    refined = refine_record(result, k)
    seed = seed_search(result) if result is not None else None
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    stack, scores = fig.subplots(2, 1, height_ratios=[1, 1.6])
    for i in range(num_blocks):
        fixed = i < barriers[0] or i >= num_blocks - barriers[1]
        color = REMOVED if i in order else BARRIER if fixed else KEPT
        stack.add_patch(Rectangle((i, 0), 0.92, 1, facecolor=color, edgecolor="#555", linewidth=0.6,
                                  hatch="//" if fixed else None))
        if i in order and not refined:
            stack.text(i + 0.46, 0.5, str(order.index(i) + 1), ha="center", va="center", color="white",
                       fontsize=8, fontweight="bold")
    stack.set_xlim(-0.2, num_blocks + 0.1)
    stack.set_ylim(0, 1)
    stack.set_yticks([])
    step = max(1, num_blocks // 15)
    stack.set_xticks([i + 0.46 for i in range(0, num_blocks, step)], [str(i) for i in range(0, num_blocks, step)],
                     fontsize=8)
    stack.set_xlabel("block (input → output); red: removed, " + (
        "the swap-refined set (no removal order)" if refined else "numbered in removal order")
        + "; hatched: never removed", fontsize=8)
    for side in ("top", "right", "left"):
        stack.spines[side].set_visible(False)
    stack.set_title(title or f"{len(order)} of {num_blocks} blocks removed", fontsize=10)

    values = round_scores(result, k) if result and k else []
    if values:
        steps = list(range(1, len(values) + 1))
        scores.plot(steps, values, marker="o", color=REMOVED)
        for s, v, b in zip(steps, values, seed.removed(k), strict=False):
            scores.annotate(f"#{b}", (s, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        scores.set_xticks(steps)
        scores.set_xlabel("removal step (the block removed)" + (
            f" of {seed.method}'s search; the pick is {sorted(order)}, refined from "
            f"{refined.get('seed_method', seed.method)}'s set with {len(refined.get('swaps') or [])} swap(s)"
            if refined else ""), fontsize=8)
        scores.set_ylabel(CRITERIA[seed.method].score_label, fontsize=8)
        scores.tick_params(labelsize=8)
        scores.grid(alpha=0.3)
    else:
        scores.axis("off")
        text = ("no blocks removed" if not order else
                textwrap.fill(refine_note(result, k).replace("**", ""), 120) if refined else
                f"the {result.method} method has no per-block scores")
        scores.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#555")
    return fig


def _fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def stats_table(sides: dict[str, dict], speeds: dict[str, dict]) -> str:
    """A Markdown table, one column per side (dense first, then pruned, then any other such as healed).

    `speeds[name]` is `engine.compare_speed(dense, name)` for each side but dense: decode time
    per token and time to first token as ratios over the same number of tokens, beside the
    ideal ratios (FLOPs).
    """
    names = list(sides)

    def row(label, key, fmt):
        return f"| {label} | " + " | ".join(fmt(sides[n].get(key)) for n in names) + " |"

    def ppl(v):
        return _fmt(v, digits=2) if isinstance(v, (int, float)) else (v or "–")

    def ms(name):
        speed = speeds.get(name) or next(iter(speeds.values()), {})
        value = speed.get("dense_ms_per_token" if name == "dense" else "pruned_ms_per_token")
        return _fmt(value, " ms", 1)

    def ratio(name, key):
        speed = speeds.get(name)
        if not speed:
            return "1x (reference)"
        if not speed.get("comparable", True):
            return f"– (on {speed.get('engine')}, dense on another engine)"
        measured, ideal = speed.get(key), (speed.get("ideal") or {}).get(key)
        text = f"**{measured:.2f}x**" if measured else "–"
        return text + (f" (ideal {ideal:.2f}x)" if ideal else "")

    lines = [
        "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
        row("engine (what measured the speed)", "engine", lambda v: ENGINE_LABELS.get(v, v or "–")),
        row("blocks", "blocks", lambda v: "–" if v is None else str(v)),
        row("parameters", "parameters", lambda v: "–" if v is None else f"{v / 1e6:,.1f}M"),
        row("new tokens", "tokens", lambda v: "–" if v is None else str(v)),
        row("time to first token", "ttft_s", lambda v: _fmt(v, " s", 3)),
        "| decode, median per token | " + " | ".join(ms(n) for n in names) + " |",
        "| **speedup**, decode (ideal: FLOP ratio) | " + " | ".join(ratio(n, "decode") for n in names) + " |",
        "| **speedup**, first token (ideal) | " + " | ".join(ratio(n, "ttft") for n in names) + " |",
        row("perplexity (WikiText-2)", "perplexity", ppl),
        "",
    ]
    compared = [s for s in speeds.values() if s.get("tokens_compared") is not None]
    if compared:
        n = min(s["tokens_compared"] for s in compared)
        lines.append(f"*Speed compared over the first {n} new tokens of every answer (the shortest answer's "
                     "length), so no side is timed on more tokens than another; batch 1, one side after the "
                     "other, on a CPU shared with other visitors: run again to compare.*")
        if not all(s.get("enough") for s in compared):
            lines.append(f"\n**Too few tokens to mean much:** the shortest answer has only {n} new tokens; the "
                         "decode figures rest on them alone. Ask for a longer answer (or more new tokens).")
    return "\n".join(lines)
