"""Write a GGUF without some blocks, copying every kept tensor byte for byte with its type.

The pattern is gguf-py's `gguf_new_metadata.py`: every metadata key is copied (with the
per-layer ones sliced and `{arch}.block_count` set, see `sleb.gguf.layers`), each kept
tensor is declared with `add_tensor_info(..., raw_dtype=its type)` and its stored bytes
written with `write_tensor_data`. Nothing is requantised. The file is written beside its
destination under a temporary name and renamed into place, so a failure leaves nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import SlebError
from ..removal import check_removal
from .layers import check_default_period, new_value
from .read import GgufSource, open_gguf

log = logging.getLogger(__name__)


def _metadata(src: GgufSource, keep: list[int]) -> tuple[list[tuple], list[str]]:
    """(key, value, type, sub_type) for every key to write, and the keys whose value changed."""
    from gguf import GGUFValueType

    items, changed = [], []
    check_default_period(src.arch, src.reader.fields, src.block_count, keep)
    for field in src.reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        old = field.contents()
        value = new_value(src.arch, field.name, old, src.block_count, keep)
        if value != old:
            changed.append(field.name)
        items.append((field.name, value, vtype, sub))
    return items, changed


def _kept_tensors(src: GgufSource, keep: list[int]) -> list[tuple[str, object]]:
    """(new name, reader tensor) for every tensor outside the removed blocks, in the source's order."""
    position = {old: new for new, old in enumerate(keep)}
    kept = []
    for tensor in src.reader.tensors:
        block = src.block_of(tensor.name)
        if block is None:
            kept.append((tensor.name, tensor))
        elif block in position:
            rest = tensor.name.split(".", 2)[2]
            kept.append((f"blk.{position[block]}.{rest}", tensor))
    return kept


def write_pruned_gguf(src_path: str | os.PathLike, removed_blocks: Iterable[int], out_path: str | os.PathLike,
                      overwrite: bool = False, progress: bool = True) -> dict:
    """Write `src_path` without `removed_blocks` (original indices) to `out_path`; returns what was written.

    The record holds the file name and size, tensor counts, the removed blocks' tensor bytes
    and the metadata keys that changed. Refuses (SlebError, nothing written) a removal the
    metadata cannot describe, naming the key.
    """
    from gguf import GGUFWriter

    src = open_gguf(src_path)
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise SlebError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it.")
    removed = check_removal(src.block_count, removed_blocks)
    keep = [i for i in range(src.block_count) if i not in removed]
    items, changed = _metadata(src, keep)
    tensors = _kept_tensors(src, keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        writer = GGUFWriter(tmp, arch=src.arch, endianess=src.reader.endianess)
        writer.data_alignment = src.reader.alignment
        for key, value, vtype, sub in items:
            writer.add_key_value(key, value, vtype, sub_type=sub)
        for name, tensor in tensors:
            writer.add_tensor_info(name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with tqdm(total=sum(int(t.n_bytes) for _, t in tensors), unit="B", unit_scale=True, desc="writing GGUF",
                  disable=not progress) as bar:
            for _, tensor in tensors:
                writer.write_tensor_data(tensor.data, tensor_endianess=src.reader.endianess)
                bar.update(int(tensor.n_bytes))
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    record = {
        "file": out.name,
        "source": src.path.name,
        "bytes": out.stat().st_size,
        "bytes_dense": src.path.stat().st_size,
        "tensors": len(tensors),
        "tensors_dense": len(src.reader.tensors),
        "removed_tensor_bytes": src.tensor_bytes(removed),
        "block_count": len(keep),
        "block_count_dense": src.block_count,
        "removed": removed,
        "metadata_changed": changed,
    }
    log.info("Wrote %s: %d of %d blocks, %s bytes (dense %s, removed blocks' tensors %s)", out, len(keep),
             src.block_count, f"{record['bytes']:,}", f"{record['bytes_dense']:,}",
             f"{record['removed_tensor_bytes']:,}")
    return record
