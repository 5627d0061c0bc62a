"""Check that a dense model is the one a pruned model came from, before healing uses it as the reference."""

from __future__ import annotations

import logging

import torch

from ..blocks import find_blocks, text_config
from ..errors import SlebError

log = logging.getLogger(__name__)

# Config keys allowed to differ between a dense model and its pruned copy.
_LAYER_KEYS = {"num_hidden_layers", "torch_dtype", "dtype", "_name_or_path", "transformers_version",
               "quantization_config", "architectures", "_commit_hash"}


def _config_diff(dense, pruned, total: int) -> list[str]:
    a, b = text_config(dense).to_dict(), text_config(pruned).to_dict()
    diff = []
    for key in sorted(set(a) | set(b)):
        if key in _LAYER_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, list) and len(va) == total and isinstance(vb, list):
            continue  # a per-layer list, sliced by the removal
        if va != vb:
            diff.append(f"{key}: dense {va!r}, pruned {vb!r}")
    return diff


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    dtype = a.dtype if a.dtype.itemsize <= b.dtype.itemsize else b.dtype  # compare at the lower precision
    return torch.equal(a.detach().cpu().to(dtype), b.detach().cpu().to(dtype))


def check_match(dense, pruned, removed: list[int], dense_name: str = "the dense model") -> None:
    """Raise SlebError unless `pruned` is `dense` with blocks `removed` deleted (same class, config, weights)."""
    if type(dense) is not type(pruned):
        raise SlebError(f"{dense_name} is a {type(dense).__name__}; the pruned model is a {type(pruned).__name__}. "
                        "Pass the dense model it was pruned from with --dense.")
    dense_blocks, pruned_blocks = find_blocks(dense).blocks, find_blocks(pruned).blocks
    total = len(dense_blocks)
    kept = [i for i in range(total) if i not in set(removed)]
    if len(kept) != len(pruned_blocks):
        raise SlebError(f"{dense_name} has {total} blocks; removing {sorted(removed)} leaves {len(kept)}, but the "
                        f"pruned model has {len(pruned_blocks)}. Pass the dense model it was pruned from.")
    diff = _config_diff(dense, pruned, total)
    if diff:
        raise SlebError(f"{dense_name} does not match the pruned model's config ({'; '.join(diff[:4])}). "
                        "Pass the dense model it was pruned from with --dense.")
    for new, old in enumerate(kept):
        a, b = dict(pruned_blocks[new].named_parameters()), dict(dense_blocks[old].named_parameters())
        if a.keys() != b.keys() or not all(_same(a[k], b[k]) for k in a):
            raise SlebError(f"Block {new} of the pruned model is not block {old} of {dense_name}: their weights "
                            "differ. Pass the dense model it was pruned from (or heal an unhealed checkpoint).")
    outside_d = {n: p for n, p in dense.named_parameters() if not n.startswith(find_blocks(dense).path + ".")}
    outside_p = {n: p for n, p in pruned.named_parameters() if not n.startswith(find_blocks(pruned).path + ".")}
    if outside_d.keys() != outside_p.keys() or not all(_same(outside_d[k], outside_p[k]) for k in outside_d):
        raise SlebError(f"The embeddings, final norm or head of {dense_name} differ from the pruned model's. "
                        "Pass the dense model it was pruned from.")
    log.info("%s matches the pruned model (blocks %s removed)", dense_name, sorted(removed))
