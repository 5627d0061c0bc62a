"""Check that a dense model is the one a pruned model came from, before healing uses it as the reference.

The expected pruned config is made the way `remove_blocks` made the real one: the same
removal (`sleb.layermap`'s remap of every field that indexes layers) applied to the dense
model built on the meta device. Kept blocks must hold the dense blocks' weights (after the
same GPT-2 inverse-layer-scale fold), exactly, or rounded to the dtype the checkpoint was
saved in when it was saved at a lower precision.
"""

from __future__ import annotations

import copy
import logging

import torch

from ..blocks import find_blocks, text_config
from ..errors import SlebError
from ..layermap import meta_model
from ..removal import fold_inverse_layer_scale, remove_blocks

log = logging.getLogger(__name__)

# Config keys that say how a model was stored or loaded, not what it computes.
_STORAGE_KEYS = {"torch_dtype", "dtype", "_name_or_path", "transformers_version", "quantization_config",
                 "architectures", "_commit_hash", "_attn_implementation_autoset"}


def expected_config(dense, removed: list[int]):
    """The config `remove_blocks(dense, removed)` writes, made on a meta copy (no weights touched)."""
    loggers = [logging.getLogger(name) for name in ("sleb.removal", "sleb.layermap")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # the real removal already said what it removed and remapped
        logger.setLevel(logging.WARNING)
    try:
        return remove_blocks(meta_model(type(dense), copy.deepcopy(dense.config)), removed).config
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in _STORAGE_KEYS}
    return value


def _config_diff(dense, pruned, removed: list[int]) -> list[str]:
    try:
        want = _plain(expected_config(dense, removed).to_dict())
    except SlebError as exc:
        return [f"removing {sorted(removed)} from it gives no config ({exc})"]
    got = _plain(pruned.config.to_dict())
    return [f"{key}: expected {want.get(key)!r}, pruned {got.get(key)!r}"
            for key in sorted(set(want) | set(got)) if want.get(key) != got.get(key)]


def _same(a: torch.Tensor, b: torch.Tensor, saved: torch.dtype | None = None) -> bool:
    """`a` (pruned) equals `b` (dense) at the lower of their precisions and the checkpoint's saved one."""
    if a.shape != b.shape:
        return False
    dtype = min((a.dtype, b.dtype, saved or a.dtype), key=lambda d: d.itemsize)
    return torch.equal(a.detach().cpu().to(dtype), b.detach().cpu().to(dtype))


def _as_moved(dense, block, old: int, new: int):
    """Dense block `old` as the removal leaves it at position `new` (GPT-2's inverse layer scale folded in)."""
    if old == new or not getattr(text_config(dense), "scale_attn_by_inverse_layer_idx", False):
        return block
    moved = copy.deepcopy(block)
    fold_inverse_layer_scale(dense, [(moved, old, new)])
    return moved


def check_match(dense, pruned, removed: list[int], dense_name: str = "the dense model",
                saved_dtype: torch.dtype | None = None) -> None:
    """Raise SlebError unless `pruned` is `dense` with blocks `removed` deleted (same class, config, weights).

    `saved_dtype`: the dtype the pruned checkpoint was saved in, when it was loaded at a
    higher precision (a bfloat16 checkpoint read as float32): weights are compared rounded to it.
    """
    if type(dense) is not type(pruned):
        raise SlebError(f"{dense_name} is a {type(dense).__name__}; the pruned model is a {type(pruned).__name__}. "
                        "Pass the dense model it was pruned from with --dense.")
    dense_blocks, pruned_blocks = find_blocks(dense).blocks, find_blocks(pruned).blocks
    total = len(dense_blocks)
    kept = [i for i in range(total) if i not in set(removed)]
    if len(kept) != len(pruned_blocks):
        raise SlebError(f"{dense_name} has {total} blocks; removing {sorted(removed)} leaves {len(kept)}, but the "
                        f"pruned model has {len(pruned_blocks)}. Pass the dense model it was pruned from.")
    diff = _config_diff(dense, pruned, removed)
    if diff:
        raise SlebError(f"{dense_name} does not match the pruned model's config ({'; '.join(diff[:4])}). "
                        "Pass the dense model it was pruned from with --dense.")
    for new, old in enumerate(kept):
        a = dict(pruned_blocks[new].named_parameters())
        b = dict(_as_moved(dense, dense_blocks[old], old, new).named_parameters())
        if a.keys() != b.keys() or not all(_same(a[k], b[k], saved_dtype) for k in a):
            raise SlebError(f"Block {new} of the pruned model is not block {old} of {dense_name}: their weights "
                            "differ. Pass the dense model it was pruned from (or heal an unhealed checkpoint).")
    outside_d = {n: p for n, p in dense.named_parameters() if not n.startswith(find_blocks(dense).path + ".")}
    outside_p = {n: p for n, p in pruned.named_parameters() if not n.startswith(find_blocks(pruned).path + ".")}
    if outside_d.keys() != outside_p.keys() or not all(_same(outside_p[k], outside_d[k], saved_dtype)
                                                       for k in outside_d):
        raise SlebError(f"The embeddings, final norm or head of {dense_name} differ from the pruned model's. "
                        "Pass the dense model it was pruned from.")
    log.info("%s matches the pruned model (blocks %s removed)", dense_name, sorted(removed))
