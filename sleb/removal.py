"""Remove blocks from a Hugging Face model for good, and save it as a standard checkpoint.

After `remove_blocks` the model is an ordinary, smaller model of the same class: the
block list is shorter, every `layer_idx` (the KV-cache index) is renumbered, and the
config says the new layer count with every per-layer list sliced to match, so
`save_pretrained` + `from_pretrained` round-trips with plain transformers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from .blocks import find_blocks, num_layers, text_config
from .errors import SlebError

log = logging.getLogger(__name__)

# Config lists whose length happens to equal the layer count but are not per-layer.
NOT_PER_LAYER = {"architectures"}


def check_removal(total: int, removed: Iterable[int]) -> list[int]:
    """Validate block indices to remove; returns them sorted."""
    removed = sorted(set(int(i) for i in removed))
    bad = [i for i in removed if not 0 <= i < total]
    if bad:
        raise SlebError(f"Block indices {bad} are out of range: the model has blocks 0..{total - 1}.")
    if len(removed) >= total:
        raise SlebError(f"Cannot remove {len(removed)} of {total} blocks: at least one must stay.")
    return removed


def _slice_config_lists(config, keep: list[int], old_total: int) -> list[str]:
    sliced = []
    for key, value in list(vars(config).items()):
        if key.startswith("_") or key in NOT_PER_LAYER:
            continue
        if isinstance(value, (list, tuple)) and len(value) == old_total:
            setattr(config, key, type(value)(value[i] for i in keep))
            sliced.append(key)
    return sliced


def remove_blocks(model: nn.Module, removed: Iterable[int]) -> nn.Module:
    """Delete the given blocks (original indices) in place and fix indices and config."""
    layout = find_blocks(model)
    total = len(layout.blocks)
    removed = check_removal(total, removed)
    keep = [i for i in range(total) if i not in removed]
    new_blocks = nn.ModuleList(layout.blocks[i] for i in keep)
    for new_index, block in enumerate(new_blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    setattr(layout.owner, layout.attr, new_blocks)

    configs = {id(model.config): model.config, id(text_config(model)): text_config(model)}
    for config in configs.values():
        if getattr(config, "num_hidden_layers", None) == total:
            sliced = _slice_config_lists(config, keep, total)
            config.num_hidden_layers = len(keep)
            if sliced:
                log.info("Sliced per-layer config lists: %s", ", ".join(sliced))
    if num_layers(model) != len(keep):
        raise SlebError("The model's config did not take the new layer count; cannot save it consistently.")
    log.info("Removed blocks %s: %d -> %d blocks", removed, total, len(keep))
    return model


def drop_quantization(model: nn.Module) -> None:
    """Forget a GGUF quantization config: the weights are already dequantized in memory."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and str(getattr(method, "value", method)) != "gguf":
        raise SlebError(
            f"The model is quantized ({method}); sleb saves only full-precision checkpoints. "
            "Load the unquantized model instead."
        )
    if quantizer is not None:
        model.hf_quantizer = None
        model.is_quantized = False
    for config in (model.config, text_config(model)):
        if hasattr(config, "quantization_config"):
            del config.quantization_config


def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    """A temporary folder beside `out`; call `.commit()` to move it into place."""
    return _AtomicDir(Path(out), overwrite)


class _AtomicDir:
    def __init__(self, out: Path, overwrite: bool):
        self.out = out
        if out.exists() and not overwrite:
            raise SlebError(f"Output folder {out} already exists; pass --overwrite (overwrite=True) to replace it.")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.path, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(model, tokenizer, out, record: dict | None = None, overwrite: bool = False, dtype=None) -> Path:
    """Save model, tokenizer, generation config and `sleb.json` to `out`, all or nothing."""
    drop_quantization(model)
    if dtype is not None:
        model = model.to(dtype)
    if record is not None:  # the dtype actually saved, after any conversion
        record = {**record, "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    with atomic_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if record is not None:
            (tmp / "sleb.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("Saved %s", out)
    return Path(out)
