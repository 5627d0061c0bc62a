"""The demo's settings, size checks before loading, and a small cache of loaded models.

Each loaded model is held once; dense and pruned share its weights through one
`BlockSwitch` (entered for the model's lifetime in the cache), and one lock per model
serializes everything that runs it: generation, search rounds, perplexity. A healed
checkpoint (see `healed`) is a model of its own, held beside its dense model and dropped with it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..blocks import BlockLayout, BlockSwitch, find_blocks
from ..calibration import Calibration, CalibrationSpec, build_calibration, device_default
from ..errors import SlebError
from ..healing import HealSpec
from ..loading import DEFAULT_BASE_ID, DEFAULT_MODEL, DEFAULT_PACKAGE, ModelSource, load_model, resolve
from ..names import variant_name
from ..orders import model_defaults, order_name, orders_of
from ..search import SearchResult
from ..speed import matmul_params
from .online import hub_online
from .sides import model_engine, resolve_engine
from .turns import Turns
from .zoo_listing import ZooOrders, ZooVariant, load_zoo

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ZOO_PREFIX = "zoo:"  # picker values of zoo variants
GENERIC_RATIO = 0.1  # default ratio of a model without an entry in sleb/orders/models.json
GENERIC_METHOD = "sleb"  # its default method, and the fallback where models.json's method has no shipped order


def embedded_default_available() -> bool:
    return importlib.util.find_spec(DEFAULT_PACKAGE) is not None


def app_heal_spec() -> HealSpec:
    """How the app heals (`SLEB_APP_HEAL=1`) and which healed checkpoints of the sleb cache it looks up.

    The one place for the app's healing settings: the recipe of `scripts/bench_heal.py` (README,
    "Healing"): the linear fold, then LoRA distillation on the default token budget, which heals
    SmolLM2 in minutes on a 2-core CPU.
    """
    return HealSpec(methods=("linear", "distill"))


def local_calibration_available() -> bool:
    from ..data import LOCAL_FILES, data_dir

    return (data_dir() / LOCAL_FILES["c4"]).is_file()


@dataclass
class DemoConfig:
    """Budgets and limits of the demo; `from_env` reads the `SLEB_APP_*` variables."""

    default_model: str = DEFAULT_MODEL
    calibration: CalibrationSpec = field(default_factory=lambda: device_default("cpu"))  # searches on demand
    max_ratio: float = 0.5
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 256
    max_params: int = 2_000_000_000
    max_models: int = 2
    ppl_windows: int = 2
    ppl_seqlen: int = 256
    concurrency: int = 16  # handlers at once; they take turns on a model (positions shown), so keep it high
    queue_size: int = 64
    allow_local_paths: bool = True
    manifest: Path = ROOT / "zoo" / "manifest.yaml"
    healed_dir: Path | None = None  # folders of healed checkpoints, named `<variant>-healed` (SLEB_APP_HEALED_DIR)
    preload: bool = False  # load the default model (and its default order's perplexity) before serving
    heal_spec: HealSpec = field(default_factory=app_heal_spec)  # healed checkpoints looked up in the sleb cache
    heal_at_start: bool = False  # heal the default pruning once, in the background, after preloading (SLEB_APP_HEAL)
    engine: str = "auto"  # SLEB_APP_ENGINE: auto (llama.cpp where installed, for GGUF models), torch, llamacpp

    @classmethod
    def from_env(cls) -> DemoConfig:
        env = os.environ
        default = env.get("SLEB_APP_MODEL") or (DEFAULT_MODEL if embedded_default_available() else DEFAULT_BASE_ID)
        source = env.get("SLEB_APP_CALIB") or ("c4" if local_calibration_available() else "wikitext2")
        spec = device_default("cpu", source)  # the calibration study's CPU budget, unless set
        if env.get("SLEB_APP_NSAMPLES"):
            spec = replace(spec, tokens=None, nsamples=int(env["SLEB_APP_NSAMPLES"]))
        elif env.get("SLEB_APP_CALIB_TOKENS"):
            spec = replace(spec, tokens=int(env["SLEB_APP_CALIB_TOKENS"]))
        spec = replace(spec, seqlen=int(env.get("SLEB_APP_SEQLEN", spec.seqlen)))
        return cls(default_model=default, calibration=spec,
                   max_params=int(float(env.get("SLEB_APP_MAX_PARAMS", 2e9))),
                   concurrency=int(env.get("SLEB_APP_CONCURRENCY", 16)),
                   allow_local_paths=env.get("SLEB_APP_LOCAL_PATHS", "1") != "0",
                   healed_dir=Path(env["SLEB_APP_HEALED_DIR"]) if env.get("SLEB_APP_HEALED_DIR") else None,
                   preload=env.get("SLEB_APP_PRELOAD", "1") != "0",
                   heal_at_start=env.get("SLEB_APP_HEAL", "0") not in ("", "0"),
                   engine=resolve_engine(env.get("SLEB_APP_ENGINE", "auto")))

    def calibration_text(self) -> str:
        spec = self.calibration
        where = {"c4": "C4 (the local sample's calibration rows, else the Hub)",
                 "wikitext2": "WikiText-2 train"}.get(spec.source, spec.source)
        if spec.tokens:
            return f"{spec.tokens:,} consecutive tokens (windows of {spec.seqlen}) of {where}"
        return f"{spec.nsamples} windows x {spec.seqlen} tokens of {where}, seed {spec.seed}"


# --- sizes, checked before any weights are read ---------------------------------------------------------------------


def params_from_config(config: dict) -> int:
    """A rough parameter count from a config.json: embeddings (and head, if untied) plus the blocks."""
    config = config.get("text_config", config)
    h = config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0
    layers = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers") or 0
    vocab = config.get("vocab_size") or 0
    inter = config.get("intermediate_size") or config.get("ffn_dim") or 4 * h
    experts = config.get("num_local_experts") or config.get("num_experts") or 1
    embed = vocab * h * (1 if config.get("tie_word_embeddings", True) else 2)
    return int(embed + layers * (4 * h * h + 3 * h * inter * experts))


def _safetensors_params(path: Path) -> int:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def local_params(source: ModelSource) -> int:
    """Parameters of a local folder (safetensors headers, else config.json) or GGUF file (tensor shapes)."""
    folder = Path(source.path)
    if source.gguf_file:
        from gguf import GGUFReader

        return int(sum(t.n_elements for t in GGUFReader(folder / source.gguf_file).tensors))
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return sum(_safetensors_params(f) for f in files)
    return params_from_config(json.loads((folder / "config.json").read_text()))


def hub_params(repo_id: str) -> int:
    """Parameters of a Hub model from its safetensors metadata (else its config.json), without its weights."""
    from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    offline_hint = (f"Download {repo_id} where the Hub is reachable and type the path of its local folder instead, "
                    "or pick the embedded default model.")
    if not hub_online() or constants.is_offline_mode():
        cached = try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(cached, str):
            raise SlebError(f"The Hugging Face Hub is unreachable (offline mode) and {repo_id} is not in the "
                            f"local cache. {offline_hint}")
        return params_from_config(json.loads(Path(cached).read_text()))
    try:
        info = HfApi().model_info(repo_id, timeout=10)
        if getattr(info, "safetensors", None) and info.safetensors.total:
            return int(info.safetensors.total)
        config = hf_hub_download(repo_id, "config.json")
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise SlebError(f"There is no model {repo_id!r} on the Hugging Face Hub (or it is private): check the "
                        "spelling, owner/name.") from exc
    except GatedRepoError as exc:
        raise SlebError(f"{repo_id} is gated: accept its licence on the Hub and set HF_TOKEN (a Space secret) "
                        "to a token that may read it.") from exc
    except Exception as exc:  # connection errors, timeouts: the Hub is unreachable
        raise SlebError(f"The Hugging Face Hub is unreachable ({type(exc).__name__}). {offline_hint}") from exc
    return params_from_config(json.loads(Path(config).read_text()))


# --- loaded models ---------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """One model in memory with everything the demo derives from it."""

    name: str
    model: object
    tokenizer: object
    source: ModelSource
    layout: BlockLayout
    switch: BlockSwitch
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: dict[str, SearchResult] = field(default_factory=dict)  # method -> longest result so far
    ppl: dict[tuple[int, ...], dict] = field(default_factory=dict)  # removed set -> perplexity
    _calibration: dict[str, Calibration] = field(default_factory=dict)
    ppl_windows: object = None
    turns: Turns = field(default_factory=Turns)  # first come, first served; positions shown to visitors
    forward_tok_s: float = 1000.0  # measured at load: what a search here will cost
    flop_counts: dict = field(default_factory=dict)  # matmul weights per part (sleb.speed), for ideal speedups
    healed: object = None  # the healed checkpoint in memory beside this model (`healed.HealedModel`), at most one
    healed_lock: threading.Lock = field(default_factory=threading.Lock)  # one healed load at a time
    engine_name: str = "torch"  # what runs both sides' answers and perplexities (`sides`)
    engine_note: str = ""  # why that engine
    engines: dict = field(default_factory=dict)  # removed blocks -> llama.cpp engine, kept for reuse (`sides`)
    engines_lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this model's turn (first come, first served) and hold it for the `with` block."""
        ticket = self.turns.take()
        try:
            self.turns.wait(ticket)
            yield
        finally:
            self.turns.give_back(ticket)

    def release(self) -> None:
        """Drop what hangs on this model (its healed model, its llama.cpp engines), so that it is freed with it."""
        self.healed = None
        self.engines.clear()

    def has_calibration(self, spec: CalibrationSpec) -> bool:
        return repr(spec) in self._calibration

    @property
    def num_blocks(self) -> int:
        return len(self.layout.blocks)

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def base_id(self) -> str:
        return self.source.base_model or self.source.name

    def parameters(self, removed=()) -> int:
        """Parameters of the model with `removed` blocks gone (shared tensors counted once)."""
        gone = {id(p) for i in removed for p in self.layout.blocks[i].parameters()}
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values() if id(p) not in gone)

    def calibration(self, spec: CalibrationSpec) -> Calibration:
        key = repr(spec)
        if key not in self._calibration:
            self._calibration[key] = build_calibration(self.tokenizer, spec, self.model.config)
        return self._calibration[key]


class ModelStore:
    """Models loaded once and kept in a small LRU cache; size checked before loading."""

    def __init__(self, config: DemoConfig):
        self.config = config
        self.zoo = load_zoo(config.manifest)
        self.orders = ZooOrders()
        self.hub_misses: dict[str, float] = {}  # healed zoo repos not found on the Hub, and when (`healed`)
        self.healed_refused: set[tuple[str, int]] = set()  # healed folders (and mtimes) that did not fit their model
        self.fallbacks: set[tuple[str, str]] = set()  # (model, method) whose default fell back to sleb, logged once
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache itself; held briefly
        self._load_lock = threading.Lock()  # one load at a time: memory, and no model loaded twice

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the model picker: the default, the embedded model, the zoo's CPU variants."""
        embedded = ("default: SmolLM2-135M-Instruct (embedded)", DEFAULT_MODEL)
        first = self.config.default_model
        out = [embedded if first == DEFAULT_MODEL else (first, first)]
        if first != DEFAULT_MODEL and embedded_default_available():
            out.append(embedded)
        return out + [(v.label, ZOO_PREFIX + v.repo) for v in self.zoo if not v.requires_gpu]

    def defaults_for(self, value: str | None) -> dict:
        """The method and ratio a model starts with, and why: a zoo variant's own, else `sleb/orders/models.json`."""
        value = (value or "").strip() or self.config.default_model
        variant = self.zoo_variant(value)
        if variant is not None:
            return {"method": variant.method, "ratio": variant.ratio,
                    "why": f"{variant.ratio:.0%} by {variant.method}: the zoo variant {variant.repo}"
                           + (" (shown in the healed column beside the pruned one)." if variant.healed else ".")}
        base = DEFAULT_BASE_ID if value == DEFAULT_MODEL else value
        with self._lock:
            entry = self._models.get(value)
        base = entry.base_id if entry is not None else base
        found = model_defaults(base)
        method, why = self._shipped_default(base, found.get("method", GENERIC_METHOD), found.get("why"))
        return {"method": method, "ratio": float(found.get("ratio", GENERIC_RATIO)),
                "why": why or f"{GENERIC_RATIO:.0%} by {GENERIC_METHOD} by default: a safe start for a model this "
                              "demo has no study of (its greedy search is the quicker one to run here); try more and "
                              "watch the perplexity."}

    def _shipped_default(self, base: str, method: str, why: str | None) -> tuple[str, str | None]:
        """`models.json`'s method, or `sleb` where only SLEB's order ships for this model (said once in the log):
        the first answer must never wait for a search."""
        shipped = {order.method for order in orders_of(base)}
        if method in shipped or GENERIC_METHOD not in shipped:
            return method, why
        if (base, method) not in self.fallbacks:
            self.fallbacks.add((base, method))
            log.warning("sleb/orders/models.json makes %s the default of %s, but no %s order ships for it "
                        "(sleb/orders/%s-%s.json); the default falls back to %s, whose order ships", method, base,
                        method, order_name(base), method, GENERIC_METHOD)
        return GENERIC_METHOD, (f"{GENERIC_METHOD} here for now: no {method} order ships for this model yet, and "
                                f"{GENERIC_METHOD}'s does, so the first answer needs no search. models.json: "
                                + (why or f"{method}."))

    def zoo_variant(self, value: str) -> ZooVariant | None:
        if not value.startswith(ZOO_PREFIX):
            return None
        repo = value.removeprefix(ZOO_PREFIX)
        return next((v for v in self.zoo if v.repo == repo), None)

    def zoo_result(self, entry: LoadedModel, method: str) -> SearchResult | None:
        """The zoo's removal order for this base model and method (its longest), if it publishes one; for a
        method whose sets are not nested (a refined one), every variant's sets merged."""
        same = [v for v in self.zoo_variants(entry) if v.method == method and not v.healed]
        found = []
        for variant in sorted(same, key=lambda v: -v.ratio):
            result = self.orders.result(variant)
            if result is not None and result.num_blocks == entry.num_blocks:
                if not result.by_count:  # one order: the longest serves every smaller count
                    return result
                found.append(result)
        return merged_result(found)

    def zoo_variants(self, entry: LoadedModel) -> list[ZooVariant]:
        """The zoo's variants of this loaded model (by its Hub id, or by what a variant loads for its base)."""
        return [v for v in self.zoo
                if v.base_model == entry.base_id or self.model_name(ZOO_PREFIX + v.repo) == entry.name]

    def model_name(self, value: str | None) -> str:
        """What to load for a picker value: a zoo variant loads its base (its fallback when that is here)."""
        value = (value or "").strip() or self.config.default_model
        variant = self.zoo_variant(value)
        if variant is None:
            return value
        fallback = variant.fallback
        if fallback == DEFAULT_MODEL and embedded_default_available():
            return fallback
        if fallback and fallback != DEFAULT_MODEL and Path(fallback).expanduser().exists():
            return fallback
        return variant.model

    def loaded(self, value: str | None) -> LoadedModel | None:
        """The model for a picker value if it is already in memory (nothing is loaded)."""
        return self._cached(self.model_name(value))

    def healed_folder(self, entry: LoadedModel, method: str, k: int) -> Path | None:
        """A healed checkpoint of this pruning, if one is there: `<healed_dir>/<variant name>-healed`.

        The name is the zoo's (`sleb.names.variant_name`, e.g. `smollm2-135m-instruct-sleb-10-healed`; a refined
        method by its slug, `...-sleb-refine-10-healed`).
        The first of the healed column's sources (see `healed.find_healed` for the others).
        """
        if not self.config.healed_dir or not k:
            return None
        name = variant_name(order_name(entry.base_id), method, round(k / entry.num_blocks, 4), healed=True)
        folder = Path(self.config.healed_dir) / name
        return folder if (folder / "config.json").is_file() else None

    def get(self, value: str | None) -> LoadedModel:
        """The loaded model for a picker value, loading it (after the size check) if needed."""
        name = self.model_name(value)
        entry = self._cached(name)
        if entry is not None:
            return entry
        with self._load_lock:
            entry = self._cached(name) or self._load(name)
            with self._lock:
                self._models[name] = entry
                while len(self._models) > self.config.max_models:
                    old, gone = self._models.popitem(last=False)
                    gone.release()
                    log.info("Unloaded %s (keeping at most %d models)", old, self.config.max_models)
            return entry

    def _cached(self, name: str) -> LoadedModel | None:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
            return self._models.get(name)

    def _load(self, name: str) -> LoadedModel:
        source = resolve(name)
        if source.kind == "local" or (source.kind == "gguf" and name != DEFAULT_MODEL):
            if not self.config.allow_local_paths:
                raise SlebError("This demo does not load local paths; type a Hugging Face Hub id (owner/name).")
            params = local_params(source)
        elif source.kind == "hub":
            params = hub_params(source.path)
        else:
            params = 0
        if params > self.config.max_params:
            raise SlebError(f"{name} has about {params / 1e9:.1f}B parameters; this demo loads models up to "
                            f"{self.config.max_params / 1e9:.1f}B. Pick a smaller model.")
        engine = model_engine(self.config.engine, source)  # an unusable choice fails before the weights load
        model, tokenizer, source = load_model(name, device="cpu")
        return loaded_model(name, model, tokenizer, source, engine)


def merged_result(results: list[SearchResult | None]) -> SearchResult | None:
    """One result of a method from several: the longest order, or for sets that are not nested (refined sets,
    one per count) every count's set and its refinement record together, with the longest greedy rounds."""
    results = [r for r in results if r is not None]
    if not results or not all(r.by_count for r in results):
        return max(results, key=lambda r: r.max_remove, default=None)
    by_count, refined = {}, {}
    for result in results:
        by_count.update(result.by_count)
        refined.update(result.settings.get("refine") or {})
    longest = max(results, key=lambda r: len(r.rounds or []))
    settings = {**longest.settings, "refine": refined} if refined else dict(longest.settings)
    return replace(longest, order=list(by_count[max(by_count)]), by_count=dict(sorted(by_count.items())),
                   settings=settings)


def loaded_model(name: str, model, tokenizer, source: ModelSource,
                 engine: tuple[str, str] = ("torch", "transformers")) -> LoadedModel:
    """A model ready to serve: warmed up, its forward speed measured, its blocks behind a `BlockSwitch`."""
    layout = find_blocks(model)
    with torch.inference_mode():  # warm-up, so the first user's timings are not a cold start
        model.generate(torch.tensor([[tokenizer.bos_token_id or 0]]), max_new_tokens=2, do_sample=False,
                       pad_token_id=tokenizer.eos_token_id)
        ids = torch.randint(3, max(4, min(model.config.vocab_size, 1000)), (1, 64))
        start = time.perf_counter()
        model(ids)  # how fast a forward pass is here, for the cost of a search
        forward_tok_s = ids.numel() / max(time.perf_counter() - start, 1e-6)
    switch = BlockSwitch(layout.blocks)
    switch.__enter__()  # bypass by flag for the model's lifetime here; restored only with the model
    log.info("Loaded %s: %d blocks (%s), forward %.0f tokens/s; answers on %s", name, len(layout.blocks),
             layout.block_class, forward_tok_s, engine[1])
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, source=source, layout=layout, switch=switch,
                       forward_tok_s=forward_tok_s, flop_counts=matmul_params(model), engine_name=engine[0],
                       engine_note=engine[1])
