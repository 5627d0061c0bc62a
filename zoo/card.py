"""The model card of a variant, its removal picture, and the zoo index; every number read from the run's files.

`model_card(record, results)` takes the variant's `sleb.json` record and `results.json` (what
the build measured) and returns a `huggingface_hub.ModelCard`: YAML front matter from
`ModelCardData` with a `model-index` of `EvalResult`s, and a body from `card_template.md`.
Nothing on the card is typed by hand: a number that was not measured is shown as "not measured".
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sleb.criteria import get_criterion, method_label

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent / "card_template.md"
PICTURE = "removal.png"
TAGS = ["sleb", "pruned", "block-pruning"]
HUB = "https://huggingface.co"

# name on the card, Hub dataset id, config, split
PPL_DATASETS = {
    "wikitext2": ("WikiText-2 (raw)", "Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
    "c4": ("C4 (en)", "allenai/c4", "en", "validation"),
}
ZEROSHOT_DATASETS = {  # the datasets of lm-eval's stock tasks
    "piqa": ("PIQA", "baber/piqa", None, "validation"),
    "winogrande": ("WinoGrande", "allenai/winogrande", "winogrande_xl", "validation"),
    "hellaswag": ("HellaSwag", "Rowan/hellaswag", None, "validation"),
    "arc_easy": ("ARC-Easy", "allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("ARC-Challenge", "allenai/ai2_arc", "ARC-Challenge", "test"),
}
FULL_PPL_WINDOWS = {"wikitext2": "every window", "c4": "256 windows"}
PAPER_CALIBRATION = (128, 2048)
# (result key suffix, label, unit)
SPEED_ROWS = [
    ("prefill", "prefill, batch 1, {prompt_len}-token prompt", "tok/s"),
    ("decode_b1", "decode, batch 1", "tok/s"),
    ("decode_batch", "decode, batch {decode_batch}", "tok/s"),
    ("ttft", "time to first token, batch 1", "s"),
]
NOT_MEASURED = "not measured"


# --------------------------------------------------------------------------------------------- small formatters


def _millions(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _ppl_change(dense: float, pruned: float) -> str:
    return f"{100 * (pruned / dense - 1):+.1f}%"


def _acc(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{100 * value:.1f}"


def rounds_of(record: dict) -> list[dict]:
    """The search rounds that made this variant (the search may have gone further for larger ratios)."""
    k = len(record["removal_order"])
    return [r for r in record["search"].get("rounds", [])[:k] if isinstance(r.get("removed"), int)]


def removal_marks(record: dict) -> dict[int, str]:
    """What each removed block is marked with: the round that removed it for a nested order, else `x` (a refined
    set is one set, chosen for this ratio, with no rounds of its own)."""
    if record.get("nested", True):
        return {block: str(i + 1) for i, block in enumerate(record["removal_order"])}
    return dict.fromkeys(record["removal_order"], "x")


def removal_strip(record: dict, width: int = 32) -> str:
    """A text picture: every block index with the round that removed it (or `x`), `.` for kept blocks."""
    total = record["num_blocks_dense"]
    when = removal_marks(record)
    nested = record.get("nested", True)
    lines = []
    for start in range(0, total, width):
        blocks = range(start, min(total, start + width))
        lines.append("block  " + "".join(f"{b:>4}" for b in blocks))
        lines.append(("round  " if nested else "cut    ") + "".join(f"{when.get(b, '.'):>4}" for b in blocks))
        lines.append("")
    lines.append("(.: kept; a number: removed in that round)" if nested else "(.: kept; x: removed)")
    return "\n".join(lines)


def removal_picture(record: dict, path: str | Path) -> Path:
    """A PNG: the blocks as a row of cells, removed ones coloured and numbered by round; below, each round's score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = record["num_blocks_dense"]
    order = record["removal_order"]
    nested = record.get("nested", True)
    rounds = rounds_of(record) if nested else []  # a refined set's blocks were not removed in the greedy's rounds
    when = removal_marks(record)
    colours = plt.get_cmap("viridis")
    rows = 2 if rounds else 1
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, 0.28 * total + 1.5), 1.6 + 2.2 * (rows - 1)), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 2][:rows]})
    ax = axes[0][0]
    for b in range(total):
        removed = b in when
        shade = 0.7 * (int(when[b]) - 1) / max(1, len(order) - 1) if removed and nested else 0.0
        ax.add_patch(plt.Rectangle((b, 0), 0.92, 1, color=colours(shade) if removed else "#d9d9d9"))
        ax.text(b + 0.46, 0.5, when.get(b, ""), ha="center", va="center", fontsize=8, color="white",
                fontweight="bold")
    ax.set_xlim(-0.2, total + 0.1)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([b + 0.46 for b in range(total)], [str(b) for b in range(total)], fontsize=7)
    ax.set_xlabel("block (original index); " + ("number: the round that removed it" if nested else
                                                "x: removed (one set for this ratio)"), fontsize=8)
    ax.set_title(f"{record.get('zoo', {}).get('variant', '')}: {len(order)} of {total} blocks removed by "
                 f"{record['method']}", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if rounds:
        ax2 = axes[1][0]
        ax2.plot(range(1, len(rounds) + 1), [r["score"] for r in rounds], marker="o", color="#333333")
        for i, r in enumerate(rounds):
            ax2.annotate(f"block {r['removed']}", (i + 1, r["score"]), textcoords="offset points", xytext=(4, 4),
                         fontsize=7)
        ax2.set_xticks(range(1, len(rounds) + 1))
        ax2.set_xlabel("round")
        ax2.set_ylabel("calibration NLL (nats, total)", fontsize=8)
        ax2.ticklabel_format(axis="y", useOffset=False, style="plain")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- card data


def eval_results(results: dict) -> list[EvalResult]:
    """The `model-index` entries: the pruned model's perplexities and zero-shot accuracies, as measured."""
    source = f"{HUB}/{results['repo_id']}/blob/main/results.json"
    out = []
    for name, r in results["pruned"]["ppl"].items():
        title, dataset, config, split = PPL_DATASETS[name]
        out.append(EvalResult(
            task_type="text-generation", task_name="Language modelling", dataset_type=dataset, dataset_name=title,
            dataset_config=config, dataset_split=split, dataset_args={"windows": r["windows"], "seqlen": r["seqlen"]},
            metric_type="perplexity", metric_name="Perplexity", metric_value=round(r["perplexity"], 4),
            source_name="sleb zoo (results.json)", source_url=source))
    for task, r in results["pruned"]["zeroshot"].items():
        title, dataset, config, split = ZEROSHOT_DATASETS[task]
        for metric in ("acc", "acc_norm"):
            if r.get(metric) is None:
                continue
            out.append(EvalResult(
                task_type="text-generation", task_name="Zero-shot multiple choice", dataset_type=dataset,
                dataset_name=title, dataset_config=config, dataset_split=split,
                dataset_args={"num_few_shot": 0, "samples": r["samples"]}, metric_type=metric,
                metric_name="accuracy" if metric == "acc" else "normalized accuracy",
                metric_value=round(r[metric], 4), source_name="sleb zoo (results.json)", source_url=source))
    return out


def card_data(results: dict) -> ModelCardData:
    datasets = [PPL_DATASETS[n][1] for n in results["pruned"]["ppl"]]
    datasets += [ZEROSHOT_DATASETS[t][1] for t in results["pruned"]["zeroshot"]]
    calib = results["calibration"].get("source")
    if calib in PPL_DATASETS:
        datasets.append(PPL_DATASETS[calib][1])
    extra = {k: results[k] for k in ("license_name", "license_link") if results.get(k)}
    return ModelCardData(
        model_name=results["variant"], base_model=results["base_model"], license=results["license"],
        library_name="transformers", pipeline_tag="text-generation", tags=list(TAGS),
        datasets=list(dict.fromkeys(datasets)) or None, eval_results=eval_results(results) or None, **extra)


# --------------------------------------------------------------------------------------------- card body


def snippet(results: dict) -> str:
    """Load and generate by repository id, with plain transformers; runs as written."""
    lines = [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'repo = "{results["repo_id"]}"',
        "tokenizer = AutoTokenizer.from_pretrained(repo)",
        "model = AutoModelForCausalLM.from_pretrained(repo)",
        "",
    ]
    if results.get("chat_template"):
        lines += [
            'messages = [{"role": "user", "content": "What is the capital of France?"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)",
            "output = model.generate(**inputs, max_new_tokens=32, do_sample=False)",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        ]
    else:
        lines += [
            'inputs = tokenizer("The capital of France is", return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=32, do_sample=False)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        ]
    return "\n".join(lines)


def llamacpp_speed_text(speed: dict | None) -> str:
    """One sentence: the GGUF's llama.cpp decode and prefill speed against the base GGUF's, measured side by side."""
    if not speed:
        return ""
    return (f" On llama.cpp ({speed['threads']} threads, {speed['cpu']}, {speed['cpu_count']} cores; prompt "
            f"{speed['prompt_len']} tokens, {speed['new_tokens']} new, medians of {speed['repeats']} alternating "
            f"rounds) it decodes {speed['pruned_decode_b1_tok_s']:.1f} tokens/s against the dense GGUF's "
            f"{speed['dense_decode_b1_tok_s']:.1f}: **{speed['speedup_decode_b1']:.2f}x** (ideal "
            f"{speed['ideal_speedup_decode_b1']:.2f}x, the FLOP ratio); prefill {speed['speedup_prefill']:.2f}x "
            f"(ideal {speed['ideal_speedup_prefill']:.2f}x).")


def gguf_section(results: dict) -> tuple[str, str]:
    """(text, commands) for running the variant's `.gguf` with llama.cpp and Ollama; empty without one."""
    gguf = results.get("gguf")
    if not gguf:
        return "", ""
    repo, name = results["repo_id"], gguf["file"]
    text = (f"`{name}` ({gguf['type']}; {gguf['made_by']}) is this model as one GGUF file, checked before upload: "
            "transformers' GGUF reader gives the logits of the checkpoint here, and llama.cpp's perplexity agrees "
            "with transformers' (see `sleb.json`, `gguf`).") + llamacpp_speed_text(results.get("speed_llamacpp"))
    prompt = "What is the capital of France?"
    commands = "\n".join([
        f"huggingface-cli download {repo} {name} --local-dir .",
        f'llama-cli -m {name} -p "{prompt}"' + (" -cnv" if results.get("chat_template") else ""),
        f"ollama run hf.co/{repo}",
    ])
    return text, commands


def comparison_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(what, dense, pruned, change) rows: structure, perplexities, accuracies, speed."""
    d, p = results["dense"], results["pruned"]
    rows = [
        ("blocks", str(results["num_blocks_dense"]), str(results["num_blocks"]),
         f"-{results['num_blocks_dense'] - results['num_blocks']}"),
        ("parameters", _millions(results["parameters_dense"]), _millions(results["parameters"]),
         f"{100 * (results['parameters'] / results['parameters_dense'] - 1):+.1f}%"),
    ]
    for name, (title, *_rest) in PPL_DATASETS.items():
        if name in p["ppl"] and name in d["ppl"]:
            a, b = d["ppl"][name]["perplexity"], p["ppl"][name]["perplexity"]
            rows.append((f"{title} perplexity ↓", f"{a:.2f}", f"{b:.2f}", _ppl_change(a, b)))
        else:
            rows.append((f"{title} perplexity ↓", NOT_MEASURED, NOT_MEASURED, ""))
    accs = []
    for task, (title, *_rest) in ZEROSHOT_DATASETS.items():
        if task in p["zeroshot"] and task in d["zeroshot"]:
            a, b = d["zeroshot"][task]["acc"], p["zeroshot"][task]["acc"]
            accs.append((a, b))
            rows.append((f"{title} accuracy (%) ↑", _acc(a), _acc(b), f"{100 * (b - a):+.1f}"))
    if accs:
        a = sum(x for x, _ in accs) / len(accs)
        b = sum(y for _, y in accs) / len(accs)
        rows.append((f"mean zero-shot accuracy, {len(accs)} task{'s' if len(accs) > 1 else ''} (%) ↑", _acc(a),
                     _acc(b), f"{100 * (b - a):+.1f}"))
    else:
        rows.append(("zero-shot accuracy ↑", NOT_MEASURED, NOT_MEASURED, ""))
    speed = results.get("speed")
    if speed:
        for key, label, unit in SPEED_ROWS:
            label = label.format(**speed)
            if key == "ttft":
                rows.append((f"{label} ↓", f"{1000 * speed['dense_ttft_s']:.1f} ms",
                             f"{1000 * speed['pruned_ttft_s']:.1f} ms", f"{speed['speedup_ttft']:.2f}x faster"))
                continue
            ideal = speed.get(f"ideal_speedup_{key}")
            change = f"{speed[f'speedup_{key}']:.2f}x" + (f" (ideal {ideal:.2f}x)" if ideal else "")
            rows.append((f"{label} ({unit}) ↑", f"{speed[f'dense_{key}_tok_s']:,.1f}",
                         f"{speed[f'pruned_{key}_tok_s']:,.1f}", change))
    else:
        rows.append(("speed", NOT_MEASURED, NOT_MEASURED, ""))
    return rows


def hardware_text(results: dict) -> str:
    hw, speed = results["hardware"], results.get("speed")
    text = (f"Measured on **{hw['name']}** ({hw['device']}, {hw['threads']} torch threads), "
            f"{results['dtype']}, torch {hw['torch']}.")
    if speed:
        text += (f" Speed: dense and pruned in one process, alternating, median of {speed['repeats']} rounds after "
                 f"{speed['warmup']} warm-up; random {speed['prompt_len']}-token prompts, {speed['new_tokens']} new "
                 "tokens; \"ideal\" is the ratio of the FLOPs each model does (sleb.speed).")
        start, end, cpus = speed.get("loadavg_start"), speed.get("loadavg_end"), speed.get("cpu_count")
        if start is not None and end is not None and cpus:
            text += f" System load average during the speed runs: {start:.1f} → {end:.1f} on {cpus} CPUs"
            text += (" (other work was running: the speed figures are noisy)." if max(start, end) > 0.75 * cpus
                     else ".")
    return text


def budget_lines(results: dict) -> tuple[list[str], list[str]]:
    """The evaluation budget as lines for the card, and the ways it falls short of the full protocol."""
    budget, cal = results["budget"], results["calibration"]
    lines, reduced = [], []
    lines.append(f"Calibration: {cal['num_windows']} windows x {cal['seqlen']} tokens of {cal['data']} "
                 f"(seed {cal['seed']}, {cal['protocol']} protocol).")
    if (cal["num_windows"], cal["seqlen"]) != PAPER_CALIBRATION:
        reduced.append(f"calibration {cal['num_windows']} x {cal['seqlen']} tokens instead of 128 x 2048")
    for name, r in results["pruned"]["ppl"].items():
        full = FULL_PPL_WINDOWS[name]
        capped = budget["eval"]["max_windows"]
        lines.append(f"{PPL_DATASETS[name][0]} perplexity: {r['windows']} non-overlapping windows x {r['seqlen']} "
                     f"tokens of {r['data']}" + (f" (capped at {capped}; the full protocol uses {full})." if capped
                                                 else " (the full protocol)."))
        if capped or budget["eval"]["seqlen"] < 2048:
            reduced.append(f"{PPL_DATASETS[name][0]} {r['windows']} x {r['seqlen']} tokens")
    skipped = [PPL_DATASETS[n][0] for n in PPL_DATASETS if n not in results["pruned"]["ppl"]]
    if skipped:
        lines.append(f"Perplexity not measured: {', '.join(skipped)}.")
        reduced.append(f"no {', '.join(skipped)} perplexity")
    if results["pruned"]["zeroshot"]:
        limit = budget["eval"]["zeroshot_limit"]
        parts = [f"{ZEROSHOT_DATASETS[t][0]} {r['samples']}" for t, r in results["pruned"]["zeroshot"].items()]
        version = next(iter(results["pruned"]["zeroshot"].values()))["lm_eval_version"]
        lines.append(f"Zero-shot (lm-eval {version}, 0-shot, documents scored): {', '.join(parts)}"
                     + (f" (the first {limit} of each task; the full protocol scores every document)." if limit
                        else " (every document)."))
        if limit:
            reduced.append(f"zero-shot on the first {limit} documents per task")
    missing = [ZEROSHOT_DATASETS[t][0] for t in ZEROSHOT_DATASETS if t not in results["pruned"]["zeroshot"]]
    if missing:
        lines.append(f"Zero-shot not measured: {', '.join(missing)}.")
        reduced.append(f"{len(missing)} of 5 zero-shot tasks not run")
    speed = results.get("speed")
    if speed:
        lines.append(f"Speed: prompt {speed['prompt_len']} tokens, {speed['new_tokens']} new tokens, decode batch "
                     f"{speed['decode_batch']}, {speed['warmup']} warm-up and {speed['repeats']} timed rounds.")
    else:
        lines.append("Speed: not measured.")
    return lines, reduced


def healing_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(what, dense, pruned, healed, gap recovered) rows for a healed variant; empty for a plain one."""
    healing = results.get("healing")
    if not healing:
        return []
    d, u, h = results["dense"], healing["unhealed"], results["pruned"]
    rows = []
    for name, (title, *_rest) in PPL_DATASETS.items():
        if all(name in x["ppl"] for x in (d, u, h)):
            a, b, c = (x["ppl"][name]["perplexity"] for x in (d, u, h))
            gap = math.log(b) - math.log(a)
            share = f"{100 * (1 - (math.log(c) - math.log(a)) / gap):.0f}% of the log-perplexity gap" if gap else ""
            rows.append((f"{title} perplexity ↓", f"{a:.2f}", f"{b:.2f}", f"{c:.2f}", share))
    tasks = [t for t in ZEROSHOT_DATASETS if all(t in x["zeroshot"] for x in (d, u, h))]
    if tasks:
        a, b, c = (sum(x["zeroshot"][t]["acc"] for t in tasks) / len(tasks) for x in (d, u, h))
        share = f"{100 * (c - b) / (a - b):.0f}% of the accuracy drop" if a != b else ""
        rows.append((f"mean zero-shot accuracy, {len(tasks)} tasks (%) ↑", _acc(a), _acc(b), _acc(c), share))
    return rows


def healing_text(results: dict) -> str:
    """What healing ran, on what data and how many tokens, and how long it took."""
    healing = results.get("healing")
    if not healing:
        return ""
    record, parts = healing["record"], []
    if "linear" in record:
        parts.append(f"a least-squares linear map per cut folded into the block before it, fitted on "
                     f"{record['linear']['tokens']:,} tokens (ridge {record['linear']['ridge']:g})")
    if "distill" in record:
        dist = record["distill"]
        parts.append(f"distillation from the dense model ({dist['method']}, KL at temperature {dist['temperature']:g}"
                     f"{', plus LM loss' if dist['lm_weight'] else ''}) on {dist['tokens_trained']:,} tokens, "
                     f"{dist['steps']} steps, peak learning rate {dist['lr']:g}, seed {dist['seed']}"
                     + (f"; {dist['repeated_tokens']:,} tokens repeat" if dist["repeated_tokens"] else ""))
    data = record["data"]
    return (f"Healing: {'; then '.join(parts)}. Healing text: {data['data']} (windows of {data['seqlen']} tokens; "
            f"{data['disjoint_from']} are never used). It took {record['seconds']:.0f} s on this machine; "
            f"held-out NLL {record['heldout_before']['nll']:.3f} → {record['heldout_after']['nll']:.3f} "
            f"(dense {record['heldout_dense_nll']:.3f}). The healed weights are folded into the ordinary ones: "
            "same architecture, same speed as the unhealed pruned model.")


def model_card(record: dict, results: dict) -> ModelCard:
    """The card of one variant, from its `sleb.json` record and its `results.json`."""
    from sleb.speed import format_speed

    lines, reduced = budget_lines(results)
    total, k = results["num_blocks_dense"], len(results["removal_order"])
    settings = record["search"].get("settings", {})
    early, latter = settings.get("early_barrier", 1), settings.get("latter_barrier", 1)
    never = [str(b) for b in list(range(early)) + list(range(total - latter, total))]
    cal = results["calibration"]
    versions = results["versions"]
    speed = results.get("speed")
    rounds = [{"round": i + 1, "block": r["removed"], "score": f"{r['score']:.2f}"}
              for i, r in enumerate(rounds_of(record))]
    gguf_text, gguf_commands = gguf_section(results)
    card = ModelCard.from_template(
        card_data(results), template_path=str(TEMPLATE),
        model_name=results["variant"], base_model=results["base_model"], removed_count=k, num_blocks_dense=total,
        num_blocks=results["num_blocks"], percent=f"{100 * k / total:.0f}% of the blocks",
        params_pruned=_millions(results["parameters"]), params_dense=_millions(results["parameters_dense"]),
        architecture=results["architecture"], weights_note=results.get("weights_note"),
        reduced="; ".join(reduced), picture=PICTURE, strip=removal_strip(record), rounds=rounds,
        calibration_text=(f"{cal['num_windows']} windows x {cal['seqlen']} tokens of {cal['data']} (seed "
                          f"{cal['seed']}); score: {settings.get('score', 'total calibration NLL')}"),
        method_text=method_text(record), method_label=method_label(record["method"]), nested=record.get("nested"),
        refine_rows=refine_rows(record), refine_summary=refine_summary(record),
        barrier_text=", ".join(never) or "(none)", snippet=snippet(results), table=comparison_rows(results),
        hardware_text=hardware_text(results), speed_details=format_speed(speed) if speed else "",
        budget_lines=lines, zoo_command=results["commands"]["zoo"], prune_command=results["commands"]["prune"],
        versions_text=", ".join(f"{k} {v}" for k, v in versions.items()),
        healing_rows=healing_rows(results), healing_text=healing_text(results),
        gguf_text=gguf_text, gguf_commands=gguf_commands,
    )
    return card


# --------------------------------------------------------------------------------------------- the zoo index


def headline(results: dict) -> dict:
    """The few numbers the index shows for a variant."""
    out = {"blocks": f"{results['num_blocks']}/{results['num_blocks_dense']}",
           "parameters": _millions(results["parameters"])}
    for name in PPL_DATASETS:
        if name in results["pruned"]["ppl"]:
            out[f"{name}_ppl"] = (results["dense"]["ppl"][name]["perplexity"],
                                  results["pruned"]["ppl"][name]["perplexity"])
    zs_d, zs_p = results["dense"]["zeroshot"], results["pruned"]["zeroshot"]
    if zs_p:
        tasks = [t for t in zs_p if t in zs_d]
        out["mean_acc"] = (sum(zs_d[t]["acc"] for t in tasks) / len(tasks), sum(zs_p[t]["acc"] for t in tasks)
                           / len(tasks), len(tasks))
    if results.get("speed"):
        out["speedup_prefill"] = results["speed"]["speedup_prefill"]
        out["speedup_decode"] = results["speed"]["speedup_decode_b1"]
    return out


def headline_text(results: dict) -> str:
    """One line: blocks, perplexity dense -> pruned, mean accuracy, speedups, budget warning."""
    h = headline(results)
    parts = [f"{method_label(results['method'])}: {h['blocks']} blocks, {h['parameters']} params"]
    for name in PPL_DATASETS:
        if f"{name}_ppl" in h:
            a, b = h[f"{name}_ppl"]
            parts.append(f"{PPL_DATASETS[name][0].split(' ')[0]} ppl {a:.2f}→{b:.2f}")
    if "mean_acc" in h:
        a, b, n = h["mean_acc"]
        parts.append(f"mean acc ({n} tasks) {100 * a:.1f}→{100 * b:.1f}")
    if "speedup_prefill" in h:
        parts.append(f"prefill {h['speedup_prefill']:.2f}x, decode {h['speedup_decode']:.2f}x "
                     f"({results['hardware']['device']})")
    if budget_lines(results)[1]:
        parts.append("reduced eval budget")
    return "; ".join(parts)


def index_readme(org: str, entries: list[dict], manifest_name: str) -> str:
    """The org card: one row per published variant with its method and headline numbers."""
    lines = [
        "---",
        "title: SLEB zoo",
        "emoji: ✂️",
        "colorFrom: indigo",
        "colorTo: pink",
        "sdk: static",
        "pinned: false",
        "---",
        "",
        f"# {org}: SLEB-pruned models",
        "",
        "Each model is its base with whole transformer blocks removed by SLEB (Song et al., ICML 2024): an "
        "ordinary checkpoint for `AutoModelForCausalLM.from_pretrained`. \"SLEB + swap refinement\" is sleb's "
        "default: SLEB's greedy search, then swaps that lower the calibration loss further, one set per ratio (not "
        "nested); \"SLEB (greedy ...)\" is the paper's exact greedy. Numbers are dense → pruned, measured "
        "when the variant was built; each card states its method, hardware and evaluation budget.",
        "",
        "| model | base | method | blocks | params | WikiText-2 ppl | C4 ppl | mean zero-shot acc (%) | prefill / "
        "decode speedup | budget |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for results in entries:
        h = headline(results)
        cells = [f"[{results['variant']}]({HUB}/{results['repo_id']})", results["base_model"],
                 method_label(results["method"]), h["blocks"], h["parameters"]]
        for name in PPL_DATASETS:
            cells.append(f"{h[name + '_ppl'][0]:.2f} → {h[name + '_ppl'][1]:.2f}" if f"{name}_ppl" in h else "-")
        cells.append(f"{100 * h['mean_acc'][0]:.1f} → {100 * h['mean_acc'][1]:.1f} ({h['mean_acc'][2]} tasks)"
                     if "mean_acc" in h else "-")
        cells.append(f"{h['speedup_prefill']:.2f}x / {h['speedup_decode']:.2f}x ({results['hardware']['device']})"
                     if "speedup_prefill" in h else "-")
        cells.append("reduced" if budget_lines(results)[1] else "full")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"Built with `python zoo/publish.py` from `{manifest_name}` of the sleb project; `zoo.json` holds "
              "the same data for programs (the sleb demo reads it).", ""]
    return "\n".join(lines)


def refine_step(record: dict) -> dict | None:
    """The refinement of this variant's block count (`search.settings.refine["<k>"]` of `sleb.json`), if refined."""
    refine = (record.get("search", {}).get("settings") or {}).get("refine") or {}
    return refine.get(str(len(record["removed"])))


def method_text(record: dict) -> str:
    """Which method chose the blocks, whether its sets are nested, and how to get the paper's exact greedy."""
    text = f"This model's blocks were chosen by **{method_label(record['method'])}**"
    if refine_step(record):
        return (text + ": SLEB's greedy search ran first, then the best seed set (the greedy's or a cheap "
                "criterion's, on the calibration NLL) was refined by swaps, a removed block traded for a kept one "
                "while the calibration NLL falls ([where this set came from](#where-this-set-came-from)). Each ratio's "
                "set is chosen on its own, so the sets are **not nested**: this model's blocks need not include a "
                "smaller ratio's. The paper's exact greedy, one nested order, is `--method sleb`.")
    if record["method"] == "sleb":
        return text + ": the paper's exact greedy (`--method sleb`), one removal order whose first blocks are each " \
            "smaller ratio's (nested)."
    return text + (" (nested: each smaller ratio's blocks are among these)." if record.get("nested") else ".")


def _blocks(blocks) -> str:
    return ", ".join(str(b) for b in sorted(blocks)) if blocks is not None else "-"


def _nats(value) -> str:
    return f"{value:,.2f}" if isinstance(value, (int, float)) else NOT_MEASURED


def refine_rows(record: dict) -> list[tuple[str, str, str]]:
    """The seeds the refinement chose among, best first: (criterion, its blocks, its calibration score)."""
    step = refine_step(record)
    if not step:
        return []
    scores = step.get("seed_scores") or {step["seed_method"]: step.get("seed_score")}
    sets = step.get("seed_sets") or {step["seed_method"]: step["seed"]}
    ranked = sorted(sets, key=lambda n: (scores.get(n) is None, scores.get(n) or 0.0, n != step["seed_method"]))
    return [(get_criterion(n).label + (" **(best: refined)**" if n == step["seed_method"] else ""), _blocks(sets[n]),
             _nats(scores.get(n))) for n in ranked]


def refine_summary(record: dict) -> str:
    """The swaps the refinement took and the calibration score before and after."""
    step = refine_step(record)
    if not step:
        return ""
    objective = {"nll": "NLL", "kl": "KL to the dense model"}.get(step["objective"], step["objective"])
    swaps = "; ".join(f"block {s['in']} back in, block {s['out']} out ({_nats(s['score'])})" for s in step["swaps"])
    if step.get("local_optimum"):
        end = "a swap-local optimum: no single swap lowers it"
    elif step.get("local_optimum") is None:
        end = "not refined (an evaluation budget of 0)"
    else:
        end = f"stopped at the budget of {step.get('budget')} candidate evaluations"
    return (f"Swaps taken: {swaps or 'none'}. Calibration {objective} (summed nats): {_nats(step.get('seed_score'))} "
            f"-> {_nats(step['score'])}, {end} ({step.get('evaluations', 0):,} candidate evaluations). "
            f"Blocks removed: {_blocks(step['removed'])}.")


def index_entry(results: dict, record: dict, record_sha256: str) -> dict:
    """A variant as `zoo.json` lists it; the fields are the ones `sleb.demo` reads from a zoo manifest."""
    return {
        "repo": results["repo_id"],
        "base_model": results["base_model"],
        "method": results["method"],
        "method_label": method_label(results["method"]),
        "nested": record.get("nested", True),
        "ratio": results["ratio"],
        "removal_order": results["removal_order"],
        "num_blocks_dense": results["num_blocks_dense"],
        "num_blocks": results["num_blocks"],
        "rounds": rounds_of(record),
        "calibration": results["calibration"],
        "headline": headline(results),
        "reduced_budget": budget_lines(results)[1],
        "sleb_json_sha256": record_sha256,
    }
