"""The healed column: a healed checkpoint of the current pruning, found, loaded once beside its dense model, or made.

A healed checkpoint is a model of its own (the pruned blocks physically gone, the weights
healed by `sleb.healing`), so it answers with its own weights and is timed like the pruned
side. Its sources, the first found wins:

1. `SLEB_APP_HEALED_DIR/<variant>-healed` (`ModelStore.healed_folder`);
2. the zoo's local build, `zoo_dir()/<variant>-healed`, for a healed variant the manifest lists;
3. online only (after the one Hub probe), that healed variant's repository on the Hub;
4. the sleb cache of `sleb.healing.cached_heal` for this model, these blocks and the app's
   healing spec (`DemoConfig.heal_spec`).

Nothing is trained on a request: `heal_in_background` (`SLEB_APP_HEAL=1`) makes the fourth
once, at start. The loaded healed model hangs on its dense `LoadedModel` (at most one at a
time) and is dropped with it when the store unloads that model.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..blocks import num_layers
from ..errors import SlebError
from ..files import is_sleb_checkpoint, read_record
from ..healing import HealSpec, cached_heal, cached_heal_dir
from ..loading import load_model
from ..prune import blocks_for_ratio
from .engine import default_pruning
from .models import LoadedModel, ModelStore, loaded_model
from .online import hub_online
from .zoo_listing import MISS_TTL_S, ZooVariant, zoo_dir

log = logging.getLogger(__name__)


@dataclass
class HealedCheckpoint:
    """A healed checkpoint folder, where it came from, and what its `sleb.json` says was removed and how healed."""

    folder: Path
    source: str
    removed: list[int] | None = None  # removal order of the checkpoint (original indices), when recorded
    methods: tuple[str, ...] = ()  # healing steps, e.g. ("linear",)

    @classmethod
    def read(cls, folder: Path, source: str) -> HealedCheckpoint:
        try:
            record = read_record(folder)
        except (OSError, json.JSONDecodeError):
            record = {}
        removed = record.get("removal_order") or record.get("removed")
        methods = (record.get("healing") or {}).get("methods") or ()
        return cls(folder, source, [int(b) for b in removed] if removed else None, tuple(methods))

    def details(self) -> dict:
        return {"source": self.source, "folder": str(self.folder), "removed": self.removed,
                "healing": "+".join(self.methods) or None}


@dataclass
class HealedModel:
    """A healed checkpoint in memory, served like any model (its own lock, warm-up, perplexity cache)."""

    checkpoint: HealedCheckpoint
    entry: LoadedModel


def zoo_healed(store: ModelStore, entry: LoadedModel, method: str, k: int) -> list[ZooVariant]:
    """The zoo's healed variants of this model that remove `k` blocks by `method`."""
    return [v for v in store.zoo_variants(entry)
            if v.healed and v.method == method and 0 < v.ratio < 1 and blocks_for_ratio(entry.num_blocks, v.ratio) == k]


def _from_hub(store: ModelStore, variant: ZooVariant) -> Path | None:
    """The healed variant's repository, downloaded once (online only; a miss is asked again after a while)."""
    from huggingface_hub import constants, snapshot_download

    if not hub_online() or constants.is_offline_mode():
        return None
    missed = store.hub_misses.get(variant.repo)
    if missed is not None and time.monotonic() - missed < MISS_TTL_S:
        return None
    try:
        folder = Path(snapshot_download(variant.repo))
    except Exception as exc:  # not published yet, or the Hub went away: no healed column
        log.info("No healed model from %s (%s)", variant.repo, type(exc).__name__)
        store.hub_misses[variant.repo] = time.monotonic()
        return None
    return folder if (folder / "config.json").is_file() else None


def find_healed(store: ModelStore, entry: LoadedModel, method: str, k: int,
                removed: list[int]) -> HealedCheckpoint | None:
    """The healed checkpoint of this pruning from the first source that has one (see the module), else None."""
    if not k:
        return None
    folder = store.healed_folder(entry, method, k)
    if folder is not None:
        return HealedCheckpoint.read(folder, f"healed folder: {folder.name}")
    variants = zoo_healed(store, entry, method, k)
    for variant in variants:
        local = zoo_dir() / variant.name
        if (local / "config.json").is_file():
            return HealedCheckpoint.read(local, f"zoo build: {variant.name}")
    for variant in variants:
        folder = _from_hub(store, variant)
        if folder is not None:
            return HealedCheckpoint.read(folder, f"zoo: {variant.repo}")
    try:
        folder = cached_heal_dir(entry.name, removed, store.config.heal_spec)
    except SlebError:
        return None
    if is_sleb_checkpoint(folder):
        return HealedCheckpoint.read(folder, "healed here (sleb cache)")
    return None


def _mismatch(entry: LoadedModel, model, k: int) -> str | None:
    """Why this model cannot stand beside `entry` pruned by `k` blocks (None when it can)."""
    if type(model) is not type(entry.model):
        return f"it is a {type(model).__name__}, the dense model a {type(entry.model).__name__}"
    if num_layers(model) != entry.num_blocks - k:
        return f"it has {num_layers(model)} blocks, not {entry.num_blocks - k}"
    if model.config.vocab_size != entry.model.config.vocab_size:
        return f"its vocabulary has {model.config.vocab_size} tokens, the dense model's {entry.model.config.vocab_size}"
    return None


def healed_model(store: ModelStore, entry: LoadedModel, checkpoint: HealedCheckpoint, k: int) -> HealedModel | None:
    """The healed model of `checkpoint`, loaded once and kept on `entry`; None when it does not fit the dense model.

    It loads on the CPU in the dense model's dtype and uses the dense tokenizer (the prompt's
    ids are the same); a checkpoint that does not fit is logged and left out, and not tried
    again until its files change.
    """
    current = entry.healed
    if current is not None and current.checkpoint.folder == checkpoint.folder:
        return current
    with entry.healed_lock:
        current = entry.healed
        if current is not None and current.checkpoint.folder == checkpoint.folder:
            return current
        try:
            stamp = (str(checkpoint.folder), (checkpoint.folder / "config.json").stat().st_mtime_ns)
        except OSError:  # removed meanwhile
            return None
        if stamp in store.healed_refused:
            return None
        entry.healed = None  # one healed model per dense model: the previous one goes before the next loads
        try:
            model, _, source = load_model(str(checkpoint.folder), device="cpu",
                                          dtype=next(entry.model.parameters()).dtype)
            problem = _mismatch(entry, model, k)
        except SlebError as exc:
            problem = str(exc)
        if problem:
            log.warning("Not showing the healed checkpoint %s: %s", checkpoint.folder, problem)
            store.healed_refused.add(stamp)
            return None
        healed = loaded_model(f"{entry.name} healed ({checkpoint.source})", model, entry.tokenizer, source)
        healed.ppl_windows = entry.ppl_windows  # the same evaluation windows as dense and pruned
        entry.healed = HealedModel(checkpoint, healed)
        return entry.healed


# --- made once, at start ----------------------------------------------------------------------------------------------


def _lower_priority() -> None:
    """Nice this thread (Linux: a thread's own nice value); torch's worker threads are shared and keep theirs."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def _heal(model: str, removed: list[int], spec: HealSpec) -> None:
    _lower_priority()
    start = time.perf_counter()
    log.info("Healing %s without blocks %s (%s) in the background; visitors are served meanwhile", model, removed,
             "+".join(spec.methods))
    try:
        folder = cached_heal(model, removed, spec, device="cpu")
    except Exception:  # the app goes on without the healed column
        log.exception("Healing %s in the background failed", model)
        return
    log.info("Healed %s in %.1f s (%s): the healed column shows from the next request", model,
             time.perf_counter() - start, folder)


def heal_in_background(store: ModelStore) -> threading.Thread | None:
    """Heal the default model's default pruning once (`cached_heal`, the app's spec) in a daemon thread.

    Returns the started thread, or None when there is nothing to do: already healed, nothing
    removed, or no known order (the app searches only on a request). While it runs, memory holds
    a second dense copy and the model being healed (`cached_heal` loads its own).
    """
    entry, method, k, result, _ = default_pruning(store)
    if not k or result is None:
        log.info("SLEB_APP_HEAL: nothing to heal (%s)", "nothing removed" if not k else
                 f"no known {method} order for {entry.name}; it is searched on the first request")
        return None
    removed = result.removed(k)
    folder = cached_heal_dir(entry.name, removed, store.config.heal_spec)
    if is_sleb_checkpoint(folder):
        log.info("SLEB_APP_HEAL: %s without blocks %s is healed already (%s)", entry.name, removed, folder)
        return None
    thread = threading.Thread(target=_heal, args=(entry.name, removed, store.config.heal_spec), daemon=True,
                              name="sleb-heal")
    thread.start()
    return thread
