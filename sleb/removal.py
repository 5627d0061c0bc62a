"""Remove blocks from a Hugging Face model for good, and save it as a standard checkpoint.

After `remove_blocks` the model is an ordinary, smaller model of the same class: the
block list is shorter, every layer-index attribute its modules carry (`layer_idx`,
`layer_id`, ...) is renumbered, and every config field that indexes layers is remapped
(`sleb.layermap`), so `save_pretrained` + `from_pretrained` builds the same blocks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .blocks import find_blocks, num_layers, text_config
from .errors import SlebError
from .files import record_path
from .layermap import built_signatures, index_attributes, remap_config, signatures

log = logging.getLogger(__name__)

def check_removal(total: int, removed: Iterable[int]) -> list[int]:
    """Validate block indices to remove; returns them sorted."""
    try:
        removed = sorted(set(int(i) for i in removed))
    except (TypeError, ValueError) as exc:
        raise SlebError(f"Block indices must be integers: {exc}") from exc
    bad = [i for i in removed if not 0 <= i < total]
    if bad:
        raise SlebError(f"Block indices {bad} are out of range: the model has blocks 0..{total - 1}.")
    if len(removed) >= total:
        raise SlebError(f"Cannot remove {len(removed)} of {total} blocks: at least one must stay.")
    return removed


def renumber(blocks, keep: list[int], attrs: set[tuple[str, str]]) -> None:
    """Set every layer-index attribute of the kept blocks to the block's new position."""
    for new_index, old_index in enumerate(keep):
        block = blocks[old_index]
        for path, attr in attrs:
            module = block.get_submodule(path) if _has(block, path) else None
            if module is not None and type(getattr(module, attr, None)) is int:
                setattr(module, attr, new_index)


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True


def fold_inverse_layer_scale(model, moves: list[tuple[nn.Module, int, int]]) -> None:
    """GPT-2's `scale_attn_by_inverse_layer_idx`: move the factor 1/(old+1) -> 1/(new+1) into the query weights.

    The attention scale is fixed at init from the layer index; a reload computes it from the
    new index. Scaling the query projection by (new+1)/(old+1) keeps the scores exact both in
    memory (whose `scaling` is updated too) and after a reload.
    """
    if not getattr(text_config(model), "scale_attn_by_inverse_layer_idx", False):
        return
    for block, old_index, new_index in moves:
        attns = [m for m in block.modules() if hasattr(m, "scaling") and hasattr(m, "c_attn")]
        known = ("embed_dim", "head_dim", "scale_attn_weights")
        if not attns or any(getattr(m, "is_cross_attention", False) or not all(hasattr(m, a) for a in known)
                            for m in attns):
            raise SlebError(
                "config.scale_attn_by_inverse_layer_idx is set but the attention modules are not the fused "
                "query/key/value layout sleb knows how to rescale; cannot remove blocks exactly."
            )
        if new_index == old_index:
            continue
        factor = (new_index + 1) / (old_index + 1)
        for attn in attns:
            with torch.no_grad():
                attn.c_attn.weight[:, : attn.embed_dim] *= factor  # Conv1D weight: [in, 3 * embed]
                if attn.c_attn.bias is not None:
                    attn.c_attn.bias[: attn.embed_dim] *= factor
            # as GPT-2 computes it at init, so the in-memory value equals a reload's exactly
            attn.scaling = (attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0) / float(new_index + 1)


def remove_blocks(model: nn.Module, removed: Iterable[int]) -> nn.Module:
    """Delete the given blocks (original indices) in place and fix indices and config.

    Layer-index attributes are found from the module tree and renumbered; config fields
    that index layers are found by building the config on the meta device and remapped
    (see `sleb.layermap`); a removal that no config can describe is refused.
    """
    layout = find_blocks(model)
    total = len(layout.blocks)
    removed = check_removal(total, removed)
    keep = [i for i in range(total) if i not in removed]
    blocks = layout.blocks
    attrs = index_attributes(blocks)
    config, sub = model.config, text_config(model)
    target = "root" if sub is config else "text"
    before = signatures(blocks)
    base = built_signatures(type(model), config)
    if base != before:
        log.warning("The blocks in memory differ from those their config builds; checking against the config's")
    moves = [(blocks[old], old, new) for new, old in enumerate(keep)]
    renumber(blocks, keep, attrs)
    fold_inverse_layer_scale(model, moves)
    want = signatures([blocks[i] for i in keep]) if base == before else [base[i] for i in keep]
    try:
        remap_config(type(model), config, target, keep, want)
    except SlebError:
        fold_inverse_layer_scale(model, [(block, new, old) for block, old, new in moves])
        renumber(blocks, list(range(total)), attrs)
        raise
    setattr(layout.owner, layout.attr, nn.ModuleList(blocks[i] for i in keep))
    if config is not sub and getattr(config, "num_hidden_layers", None) == total:
        config.num_hidden_layers = len(keep)
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


def save_checkpoint(model, tokenizer, out, record: dict | None = None, overwrite: bool = False, dtype=None,
                    verifier=None, extras=None) -> Path:
    """Save model, tokenizer, generation config and `sleb.json` to `out`, all or nothing.

    Before writing, the config is checked to rebuild the model (`sleb.verify.check_config`);
    with a `verifier` (`sleb.verify.Verifier`) the written folder is reloaded and checked
    before it is moved into place, and the result goes into `sleb.json` as "verification".
    `extras(folder) -> dict` writes more files into the folder before that (a GGUF, see
    `sleb.gguf.export`); what it returns is added to `sleb.json`.
    """
    from .verify import check_config

    drop_quantization(model)
    check_config(model)
    if dtype is not None:
        model = model.to(dtype)
    if record is not None:  # the dtype actually saved, after any conversion
        record = {**record, "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    with atomic_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        verification = {"config_check": "passed"}
        verification.update(verifier(tmp, dtype) if verifier is not None else {"reload": "skipped"})
        added = extras(tmp) if extras is not None else {}
        if record is not None:
            record = {**record, "verification": verification, **added}
            record_path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    log.info("Saved %s", out)
    return Path(out)
