"""Heal a pruned checkpoint (or an in-memory pruned model) and record what was done in `sleb.json`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..devices import offloaded_modules
from ..errors import SlebError
from ..files import record_path
from ..fingerprint import weights_fingerprint
from ..loading import cache_dir, load_model
from ..removal import save_checkpoint
from ..verify import Verifier
from .distill import DistillSpec, distill, heldout_scores, teacher_logprobs
from .generated import GenerateSpec
from .linear import fit_linear, fold_problem
from .match import check_match
from .methods import HEAL_METHODS
from .text import heal_data

log = logging.getLogger(__name__)



@dataclass
class HealSpec:
    methods: tuple[str, ...] = ("linear",)
    source: str = "c4"  # healing text: c4 (calibration rows), wikitext2 (train), a .txt/.jsonl file, generated
    generate: GenerateSpec = field(default_factory=GenerateSpec)  # for sources with "generated"
    seqlen: int = 512
    heldout: int = 4  # windows kept out of training, for before/after NLL and KL
    linear_tokens: int = 16384
    ridge: float = 1e-3
    distill: DistillSpec = field(default_factory=DistillSpec)
    data_dir: str | None = None
    eval_ppl: tuple[str, ...] = ()  # perplexity sets evaluated before and after (optional)
    eval_max_windows: int | None = None
    eval_seqlen: int = 2048


def parse_methods(text: str) -> tuple[str, ...]:
    if text not in HEAL_METHODS:
        raise SlebError(f"Unknown healing {text!r}; use one of: {', '.join(HEAL_METHODS)}.")
    return tuple(text.split("+"))


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _state_path(models: list[str], removed: list[int], spec: HealSpec, data_info: dict) -> Path:
    """The resumable distillation state of these two models' weights, blocks, settings and data."""
    base = Path(os.environ.get("SLEB_STATE_DIR") or cache_dir() / "state") / "heals"
    key = hashlib.sha256(json.dumps([models, sorted(removed), asdict(spec), data_info["fingerprint"]],
                                    sort_keys=True, default=str).encode()).hexdigest()
    return base / f"distill-{key[:20]}.pt"


def require_in_memory(model, name: str) -> None:
    """Refuse a model with offloaded weights: healing reads them all, trains them and writes into them."""
    offloaded = offloaded_modules(model)
    if offloaded:
        raise SlebError(
            f"Healing reads, trains and rewrites every weight, but {len(offloaded)} modules of {name} are offloaded "
            f"(weights on 'meta', loaded by accelerate at each call, e.g. {offloaded[0]}), as device_map does when "
            "the GPU is too small. Load both models whole: pass --device cpu (slower, same result), or use GPUs "
            "with room for the dense and the pruned model.")


def heal_model(dense, pruned, tokenizer, removed: list[int], spec: HealSpec, progress: bool = True,
               stop_after: int | None = None, *, dense_name: str = "the dense model",
               saved_dtype: torch.dtype | None = None):
    """Heal `pruned` in memory against `dense`; returns `(healed model, healing record)`.

    `dense` is the reference (teacher); it is checked against `pruned` first (at
    `saved_dtype`, the precision `pruned` was saved in, if lower than it is held). The
    returned model is `pruned` itself (linear) or its merged copy (distill). An
    interrupted distillation resumes from a state keyed by both models' weights; the
    state is deleted once the healing completes.
    """
    start = time.perf_counter()
    for m in spec.methods:
        if m not in ("linear", "distill"):
            raise SlebError(f"Unknown healing step {m!r}; use one of: {', '.join(HEAL_METHODS)}.")
    for model, name in ((dense, dense_name), (pruned, "the pruned model")):
        require_in_memory(model, name)
    try:
        check_match(dense, pruned, removed, dense_name, saved_dtype)
    except SlebError as exc:
        raise SlebError(f"Refusing to heal: {exc}") from exc
    models = [weights_fingerprint(dense), weights_fingerprint(pruned)]  # before the fold changes `pruned`
    methods, skipped = _applicable(spec.methods, pruned, removed)
    data = heal_data(tokenizer, spec.source, spec.seqlen, spec.heldout, spec.data_dir, teacher=dense,
                     generate=spec.generate, progress=progress)
    dtype = spec.distill.dtype if "distill" in methods else "fp32"
    healing = {"methods": list(methods), "data": data.info, "spec": {k: v for k, v in asdict(spec).items()
                                                                      if k not in ("distill", "data_dir")}}
    if skipped:
        healing["linear_skipped"] = skipped
    reference, healing["heldout_dense_nll"] = teacher_logprobs(dense, data.heldout, dtype)
    healing["heldout_before"] = heldout_scores(pruned, dense, data.heldout, dtype, reference)
    if spec.eval_ppl:
        healing["eval_before"] = _evaluate(pruned, tokenizer, spec, progress)
    if "linear" in methods:
        count = min(data.train.shape[0], max(1, spec.linear_tokens // spec.seqlen))
        if count * spec.seqlen < spec.linear_tokens:
            log.warning("Linear healing asked for %d tokens; the pool holds %d.", spec.linear_tokens,
                        count * spec.seqlen)
        healing["linear"] = fit_linear(dense, pruned, removed, data.train[:count], spec.ridge, progress=progress)
        if "distill" in methods:
            healing["heldout_after_linear"] = heldout_scores(pruned, dense, data.heldout, dtype, reference)
    if "distill" in methods:
        state = _state_path(models, removed, spec, data.info)
        pruned, report = distill(pruned, dense, data.train, spec.distill, state, key=str(state), progress=progress,
                                 stop_after=stop_after)
        healing["distill"] = report
        if not report["finished"]:
            raise SlebError(f"Distillation stopped at step {report['steps_done']} of {report['steps']}; run the "
                            f"same command again to resume from {state}.")
    healing["heldout_after"] = heldout_scores(pruned, dense, data.heldout, dtype, reference)
    if spec.eval_ppl:
        healing["eval_after"] = _evaluate(pruned, tokenizer, spec, progress)
    if "distill" in methods:
        state.unlink(missing_ok=True)  # done: nothing may resume from it
    healing["seconds"] = round(time.perf_counter() - start, 3)
    healing["peak_rss_mb"] = _peak_rss_mb()
    log.info("Healed (%s) in %.1f s: held-out NLL %.4f -> %.4f (dense %.4f)", "+".join(methods),
             healing["seconds"], healing["heldout_before"]["nll"], healing["heldout_after"]["nll"],
             healing["heldout_dense_nll"])
    return pruned, healing


def _applicable(methods: tuple[str, ...], pruned, removed: list[int]) -> tuple[tuple[str, ...], str | None]:
    """The healing steps that apply to `pruned`, decided before any work, and why the fold was dropped."""
    problem = fold_problem(pruned, removed) if "linear" in methods else None
    if problem is None:
        return methods, None
    if "distill" not in methods:
        raise SlebError(f"{problem} Heal it by distillation alone instead (--method distill; with prune, "
                        "--heal distill).")
    log.warning("The linear fold does not apply to this model, so healing is distillation alone. %s", problem)
    return ("distill",), problem


def _evaluate(model, tokenizer, spec: HealSpec, progress: bool) -> dict:
    from ..evaluation.heldout import evaluate_ppl

    results = evaluate_ppl(model, tokenizer, list(spec.eval_ppl), spec.eval_seqlen, spec.eval_max_windows,
                           data_root=spec.data_dir, progress=progress)
    return {k: {"perplexity": v["perplexity"], "windows": v["windows"], "seqlen": v["seqlen"]}
            for k, v in results.items()}


def read_record(folder: str | os.PathLike) -> dict | None:
    path = record_path(folder)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SlebError(f"{path} is not valid JSON ({exc}); restore it or pass --dense and --blocks.") from exc


def checkpoint_dtype(folder: str | os.PathLike) -> torch.dtype | None:
    """The dtype a checkpoint folder's weights were saved in, from its `config.json` (None if it says none)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = getattr(torch, str(config.get("dtype") or config.get("torch_dtype")), None)
    return value if isinstance(value, torch.dtype) else None


def heal(pruned_dir: str | os.PathLike, out: str | os.PathLike, spec: HealSpec | None = None,
         dense: str | None = None, removed: list[int] | None = None, device: str | None = "auto",
         overwrite: bool = False, progress: bool = True, stop_after: int | None = None,
         verify: bool = True) -> Path:
    """Heal the checkpoint in `pruned_dir` and save the healed checkpoint to `out` (all or nothing).

    The dense model comes from `dense`, else from the folder's `sleb.json`; the removed
    blocks from `removed`, else from `sleb.json`. The saved folder is reloaded and its
    logits compared with the healed model in memory (`verify=False` skips that).
    """
    spec = spec or HealSpec()
    if Path(out).exists() and not overwrite:
        raise SlebError(f"Output folder {out} already exists; pass --overwrite to replace it.")
    record = read_record(pruned_dir)
    if record is None and dense is None:
        raise SlebError(f"{pruned_dir} has no sleb.json, so the dense model it came from is unknown: pass "
                        "--dense MODEL (and --blocks with the removed block indices).")
    if record is not None and record.get("healing"):
        raise SlebError(f"{pruned_dir} is already healed ({'+'.join(record['healing']['methods'])}); heal the "
                        "unhealed checkpoint instead (e.g. with --heal linear+distill).")
    dense_name = dense or record.get("model_argument") or record.get("base_model")
    removed = removed if removed is not None else (record or {}).get("removal_order")
    if removed is None:
        raise SlebError(f"{pruned_dir}'s sleb.json has no removal_order; pass --blocks with the removed blocks.")
    pruned_model, tokenizer, _ = load_model(str(pruned_dir), device=device, dtype="float32")
    dense_model, _, _ = load_model(dense_name, device=device, dtype="float32")
    healed, healing = heal_model(dense_model, pruned_model, tokenizer, removed, spec, progress, stop_after,
                                 dense_name=dense_name, saved_dtype=checkpoint_dtype(pruned_dir))
    healing["dense_model"] = dense_name
    new_record = dict(record or {"format": "sleb/1", "base_model": dense_name, "model_argument": dense_name,
                                 "removal_order": list(removed), "removed": sorted(removed)})
    new_record["healing"] = healing
    save_as = (record or {}).get("dtype")
    verifier = Verifier(healed, [], reference="the healed model in memory") if verify else None
    save_checkpoint(healed, tokenizer, out, new_record, overwrite=overwrite,
                    dtype=getattr(torch, save_as) if save_as in ("bfloat16", "float16") else None,
                    verifier=verifier)
    return Path(out)
