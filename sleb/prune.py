"""The whole job: choose blocks with a method, remove them, save checkpoints with `sleb.json`.

`find_removal` runs (or resumes, or reuses) one search up to the largest block count
asked for; `prune` turns its result into one checkpoint per ratio. The record written
next to each checkpoint holds the removal order with each round's scores, the method,
the calibration settings, dtype, versions and timings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from .blocks import find_blocks, num_layers
from .calibration import Calibration, CalibrationSpec, build_calibration
from .criteria import (
    DEFAULT_METHOD,
    METHODS,
    PICK_METHODS,
    REFINE_SUFFIX,
    base_method,
    get_criterion,
    is_nested,
    method_from_slug,
    method_slug,
    refine_seeds,
)
from .devices import devices_of
from .errors import SlebError
from .files import search_state_path, state_dir
from .fingerprint import weights_fingerprint
from .loading import load_model
from .removal import remove_blocks, save_checkpoint
from .search import SearchResult, SearchState
from .verify import Verifier
from .version import __version__

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_METHOD", "METHODS", "PICK_METHODS", "choose", "find_removal", "prune"]


def blocks_for_ratio(total: int, ratio: float) -> int:
    """Number of blocks for a removal ratio: round(ratio * total), at least one."""
    if not 0 < ratio < 1:
        raise SlebError(f"A removal ratio must lie strictly between 0 and 1, got {ratio}.")
    return max(1, round(ratio * total))


def search_key(model, calibration: Calibration, method: str, early_barrier: int, latter_barrier: int,
               seed: int, reference: bool) -> str:
    """Identifies one search: same model config and weights, data, method and settings."""
    parts = {
        "config": model.config.to_json_string(use_diff=False),
        "weights": weights_fingerprint(model),
        "dtype": str(next(model.parameters()).dtype),
        "calibration": calibration.info["fingerprint"],
        "method": method,
        "barriers": [early_barrier, latter_barrier],
        "seed": seed if get_criterion(method).seeded else None,
        "reference": reference,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def find_removal(model, calibration: Calibration, num_remove: int, method: str = "sleb", *, early_barrier: int = 1,
                 latter_barrier: int = 1, batch_size: int | None = None, seed: int = 0, progress: bool = True,
                 state_path: str | os.PathLike | None = None, reference: bool = False) -> SearchResult:
    """Which blocks to remove, by `method`, for up to `num_remove` blocks.

    SLEB writes its state after every round and resumes from it; every method's
    finished result is kept in the state folder, so asking again costs nothing.
    """
    criterion = get_criterion(method)
    if criterion.name != method:
        raise SlebError(f"Unknown method {method!r}; choose one of: {', '.join(METHODS)} (refine with refine=).")
    key = search_key(model, calibration, method, early_barrier, latter_barrier, seed, reference)
    path = Path(state_path) if state_path else search_state_path(method, key)
    start = time.perf_counter()
    if criterion.resumable:
        result = criterion.run(model, calibration.windows, num_remove, early_barrier, latter_barrier, batch_size,
                               state=SearchState(path, key), progress=progress, reference=reference)
    else:
        result = _cached_baseline(path, key, num_remove)
        if result is None:
            result = criterion.run(model, calibration.windows, num_remove, early_barrier, latter_barrier,
                                   batch_size=batch_size, seed=seed, progress=progress)
            write_json_atomic(path, {"key": key, "result": result.to_dict()})
    result.settings.update(calibration=calibration.info, seed=seed, state_file=path.name,
                           search_seconds=round(time.perf_counter() - start, 3))
    return result


def refine_removal(model, calibration: Calibration, result: SearchResult, counts: Sequence[int], spec, *,
                   early_barrier: int = 1, latter_barrier: int = 1, batch_size: int | None = None, seed: int = 0,
                   progress: bool = True, reference: bool = False) -> SearchResult:
    """`result` swap-refined at each count (`sleb.pick.refine_result`), resumable from the state folder."""
    from .pick import refine_result

    base = search_key(model, calibration, result.method, early_barrier, latter_barrier, seed, reference)
    return refine_result(model, calibration, result, sorted(counts), spec, base_key=base, state_dir=state_dir(),
                         early_barrier=early_barrier, latter_barrier=latter_barrier, batch_size=batch_size,
                         seed=seed, progress=progress, reference=reference)


def resolve_method(method: str, refine=None):
    """`(criterion name, refine spec)` for a method name: '<criterion>+refine' (the default, 'sleb+refine') is the
    criterion swap-refined from the best of its set and every cheap criterion's (`RefineSpec(seeds="all")`) unless
    `refine` says otherwise; a plain criterion name is refined only when `refine` is given. A method's slug (the
    name of folders and zoo variants: 'sleb-refine') reads as the method."""
    from .refine import RefineSpec

    method = method_from_slug(method)
    name = base_method(method)
    if method != name and refine_seeds(method) is None:
        raise SlebError(f"Unknown method {method!r}; choose one of: {', '.join(PICK_METHODS)}.")
    get_criterion(name)
    if method != name and refine is None:
        refine = RefineSpec(seeds=refine_seeds(method))
    return name, refine


def recorded_method(method: str, refine: str | None = None) -> str:
    """The method a pick of `method` with `--refine refine` is recorded under (`sleb.json`'s `method`): 'sleb+refine'
    -> 'sleb+refine', 'sleb' -> 'sleb', 'sleb' with refine 'seed' or 'all' -> 'sleb+refine'."""
    from .refine import RefineSpec

    name, spec = resolve_method(method, RefineSpec(seeds=refine) if refine else None)
    return name + REFINE_SUFFIX if spec is not None else name


def choose(model, tokenizer, calibration: Calibration, counts: Sequence[int], method: str = DEFAULT_METHOD, *,
           refine=None, validate=None, early_barrier: int = 1, latter_barrier: int = 1, batch_size: int | None = None,
           seed: int = 0, progress: bool = True, state_path=None, reference: bool = False) -> SearchResult:
    """The sets to remove at each count: `method`'s, swap-refined with `refine` (a `RefineSpec`; the default
    method 'sleb+refine' refines from every cheap criterion's set too), and with `validate` (a `ValidateSpec`)
    the candidate of lowest NLL on held-out calibration windows."""
    method, refine = resolve_method(method, refine)
    heldout = None
    if validate is not None:
        from .pick import split_calibration

        calibration, heldout = split_calibration(calibration, validate)
    opts = {"early_barrier": early_barrier, "latter_barrier": latter_barrier, "batch_size": batch_size, "seed": seed,
            "progress": progress}
    searched = find_removal(model, calibration, max(counts), method, state_path=state_path, reference=reference,
                            **opts)
    result = refine_removal(model, calibration, searched, counts, refine, reference=reference, **opts) \
        if refine is not None else searched
    if validate is not None:
        from .pick import validated_result

        start = time.perf_counter()
        result = validated_result(model, tokenizer, calibration, heldout, searched, result if refine else None,
                                  sorted(counts), validate, **opts)
        result.settings["validation_seconds"] = round(time.perf_counter() - start, 3)
    return result


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cached_baseline(path: Path, key: str, num_remove: int) -> SearchResult | None:
    """A finished baseline result for this key, or None; an unreadable cache file is a clear error."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return None
        result = SearchResult.from_dict(data["result"])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise SlebError(f"The cached baseline result {path} is corrupt ({type(exc).__name__}: {exc}); "
                        "delete it and run again to recompute it.") from exc
    return result if result.max_remove >= num_remove else None


def versions() -> dict:
    import transformers

    return {"sleb": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def make_record(result: SearchResult, removed_order: list[int], source, dense_params: int, model, extra: dict) -> dict:
    """The `sleb.json` written next to a pruned checkpoint."""
    return {
        "format": "sleb/1",
        "method": result.method,
        "nested": is_nested(result.method) and not result.by_count,
        "base_model": source.base_model or source.name,
        "model_argument": source.name,
        "num_blocks_dense": result.num_blocks,
        "num_blocks": result.num_blocks - len(removed_order),
        "removed": sorted(removed_order),
        "removal_order": removed_order,
        "ratio": round(len(removed_order) / result.num_blocks, 4),
        "parameters_dense": dense_params,
        "parameters": parameter_count(model),
        "search": result.to_dict(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _heal(model, device, dtype, pruned, tokenizer, order, spec, record, progress):
    """Heal a copy of `pruned` against a fresh dense copy of `model` (see sleb.healing)."""
    import copy

    from .healing import heal_model

    dense, _, _ = load_model(model, device=device, dtype=dtype)
    healed, healing = heal_model(dense, copy.deepcopy(pruned), tokenizer, order, spec, progress=progress)
    healing["dense_model"] = record["model_argument"]
    return healed, healing


def parse_ratios(text: str | Sequence[float]) -> list[float]:
    values = text.split(",") if isinstance(text, str) else text
    try:
        return [float(v) for v in values]
    except ValueError as exc:
        raise SlebError(f"Ratios must be numbers like 0.2 or 0.1,0.2,0.3; got {text!r}.") from exc


def variant_dirs(out: str | os.PathLike, counts: list[int], total: int, method: str) -> dict[int, Path]:
    """One folder per block count: `out` itself for one, `out/<method>-<pct>` for several."""
    out = Path(out)
    if len(counts) == 1:
        return {counts[0]: out}
    return {k: out / f"{method_slug(method)}-{round(100 * k / total)}pct-{total - k}of{total}" for k in counts}


def prune(model: str | None = None, out: str | os.PathLike = "pruned", *, ratios: Sequence[float] | None = None,
          num_remove: Sequence[int] | None = None, method: str = DEFAULT_METHOD,
          calibration: CalibrationSpec | None = None, early_barrier: int = 1, latter_barrier: int = 1,
          batch_size: int | None = None, seed: int = 0,
          device: str | None = "auto", dtype=None, save_dtype=None, overwrite: bool = False,
          progress: bool = True, state_path=None, reference: bool = False, verify: bool = True,
          heal=None, gguf: bool = False, gguf_type: str | None = None, data_dir=None, refine=None,
          validate=None) -> list[Path]:
    """Load, search once, and save one pruned checkpoint per ratio (or block count). Returns the folders.

    Each checkpoint is reloaded and compared with the model with its blocks bypassed before
    it is kept (`verify=False` skips that, for models too large to load twice). With `heal`
    (a `sleb.healing.HealSpec`) each checkpoint is healed against the dense model before
    saving, and the reload is compared with the healed model instead. With `gguf` (a GGUF
    source, or any source with llama.cpp's converter and `gguf_type`) each folder also gets a
    pruned GGUF file, checked likewise (`sleb.gguf.export`). With `refine` (a
    `sleb.refine.RefineSpec`) each count's set is swap-refined (`sleb.pick.refine_result`);
    the sets are then not nested and each checkpoint is cut from the dense model. With `validate`
    (a `sleb.pick.ValidateSpec`) a share of the calibration windows is held out and each count's
    set is the candidate (the method's, the refined one, each criterion's) of lowest NLL on it.
    """
    resolve_method(method, refine)  # an unknown method fails before any loading
    export = _plan_gguf(model, heal, verify, data_dir, progress, gguf_type) if gguf else None
    timings = {}
    t0 = time.perf_counter()
    loaded, tokenizer, source = load_model(model, device=device, dtype=dtype)
    timings["load_s"] = round(time.perf_counter() - t0, 3)
    total = num_layers(loaded)
    find_blocks(loaded)  # fail early, before any data work, if the blocks cannot be found
    if (ratios is None) == (num_remove is None):
        raise SlebError("Give either ratios or block counts to remove (one of --ratio / --num-remove).")
    counts = sorted({blocks_for_ratio(total, r) for r in ratios} if ratios else {int(k) for k in num_remove})
    dirs = variant_dirs(out, counts, total, method)
    clash = [str(d) for d in dirs.values() if d.exists()]
    if clash and not overwrite:
        raise SlebError(f"Output folder(s) already exist: {', '.join(clash)}; pass --overwrite to replace them.")
    spec = calibration or CalibrationSpec(seed=seed)
    calib = build_calibration(tokenizer, spec, loaded.config)
    result = choose(loaded, tokenizer, calib, counts, method, refine=refine, validate=validate,
                    early_barrier=early_barrier, latter_barrier=latter_barrier, batch_size=batch_size, seed=seed,
                    progress=progress, state_path=state_path, reference=reference)
    timings["search_s"] = result.settings["search_seconds"]
    for key in ("refine_seconds", "validation_seconds"):
        if key in result.settings:
            timings[key.replace("_seconds", "_s")] = result.settings[key]
    dense_params = parameter_count(loaded)
    gone: list[int] = []  # original indices removed from `loaded` so far
    saved = []
    for k in counts:
        order = result.removed(k)
        if not set(gone) <= set(order):  # not nested (angular): start again from the dense model
            loaded, tokenizer, _ = load_model(model, device=device, dtype=dtype)
            gone = []
        kept = [i for i in range(total) if i not in gone]
        now = [kept.index(i) for i in order if i not in gone]
        verifier = Verifier(loaded, now) if verify else None
        remove_blocks(loaded, now)
        gone = list(order)
        t1 = time.perf_counter()
        record = make_record(result, order, source, dense_params, loaded,
                             {"device": ",".join(devices_of(loaded)), "timings": dict(timings)})
        to_save = loaded
        if heal is not None:
            to_save, record["healing"] = _heal(model, device, dtype, loaded, tokenizer, order, heal, record, progress)
            verifier = Verifier(to_save, [], reference="the healed model in memory") if verify else None
        extras = gguf_extras(export, order, total, verifier, tokenizer) if export else None
        save_checkpoint(to_save, tokenizer, dirs[k], record, overwrite=overwrite, dtype=save_dtype, verifier=verifier,
                        extras=extras)
        log.info("Saved %d of %d blocks removed (%s) to %s in %.1f s", k, total, order, dirs[k],
                 time.perf_counter() - t1)
        saved.append(dirs[k])
    return saved


def _plan_gguf(model, heal, verify, data_dir, progress, gguf_type):
    from .gguf.export import plan_export
    from .loading import resolve

    return plan_export(resolve(model), heal, verify, data_dir, progress, gguf_type)


def gguf_extras(export, removed, total, verifier, tokenizer):
    """The `save_checkpoint(extras=...)` hook that writes and verifies the pruned GGUF into the folder."""
    from .gguf.export import export_gguf

    def write(folder: Path) -> dict:
        return {"gguf": export_gguf(folder, export, sorted(removed), total, verifier, tokenizer)}

    return write
