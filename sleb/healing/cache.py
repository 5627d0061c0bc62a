"""Heal a model's pruned copy once and keep the checkpoint in the sleb cache (for the app and scripts).

    from sleb.healing import HealSpec, cached_heal
    folder = cached_heal("default", [5, 13, 14, 16, 17, 18], HealSpec(methods=("linear",)))
    # later calls with the same model, blocks and settings return the same folder at once
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from ..blocks import num_layers
from ..files import is_sleb_checkpoint
from ..loading import cache_dir, load_model, resolve
from ..removal import check_removal, remove_blocks, save_checkpoint
from ..verify import Verifier
from .run import HealSpec, heal_model

log = logging.getLogger(__name__)


def cached_heal_dir(model: str, removed: list[int], spec: HealSpec) -> Path:
    """Where `cached_heal` keeps the healed checkpoint of these inputs."""
    source = resolve(model)
    ident = [source.path, source.gguf_file, sorted(removed), asdict(spec)]
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / "healed" / f"{Path(source.name).name or 'model'}-{key}"


def cached_heal(model: str, removed: list[int], spec: HealSpec | None = None, device: str | None = "auto",
                progress: bool = False) -> Path:
    """The folder of `model` with blocks `removed` (original indices) deleted and healed by `spec`.

    Made once (atomically) and reused; load it with `sleb.load_model(folder)` or plain transformers.
    """
    spec = spec or HealSpec()
    folder = cached_heal_dir(model, removed, spec)
    if is_sleb_checkpoint(folder):
        return folder
    dense, tokenizer, source = load_model(model, device=device, dtype="float32")
    removed = check_removal(num_layers(dense), removed)
    pruned = remove_blocks(copy.deepcopy(dense), removed)
    healed, record = heal_model(dense, pruned, tokenizer, removed, spec, progress=progress)
    record["dense_model"] = source.name
    save_checkpoint(healed, tokenizer, folder, {"format": "sleb/1", "base_model": source.base_model or source.name,
                                                "model_argument": source.name, "removal_order": removed,
                                                "removed": removed, "healing": record}, overwrite=True,
                    verifier=Verifier(healed, [], reference="the healed model in memory"))
    log.info("Healed checkpoint cached at %s", folder)
    return folder
