"""Open a GGUF file with gguf-py's reader and check it is whole and names its blocks consistently."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlebError

BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass
class GgufSource:
    """A readable GGUF: its reader, architecture and block count."""

    path: Path
    reader: object  # gguf.GGUFReader
    arch: str
    block_count: int

    def value(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return field.contents() if field is not None else default

    def block_of(self, tensor_name: str) -> int | None:
        match = BLOCK_TENSOR.match(tensor_name)
        return int(match.group(1)) if match else None

    def tensor_bytes(self, blocks=None) -> int:
        """Bytes of tensor data, of all tensors or of those in `blocks`."""
        return sum(int(t.n_bytes) for t in self.reader.tensors
                   if blocks is None or self.block_of(t.name) in set(blocks))


def open_gguf(path: str | os.PathLike) -> GgufSource:
    """Read `path`; a damaged or truncated file, or one without a block count, is a clear SlebError."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise SlebError(f"GGUF file {path} does not exist.")
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as exc:
        raise SlebError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it may be truncated "
                        "or damaged: download or write it again.") from exc
    size = path.stat().st_size
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise SlebError(f"{path} is truncated: its tensors need {end:,} bytes but the file has {size:,}. "
                        "Download or write it again.")
    split = reader.fields.get("split.count")
    if split is not None and int(split.contents()) > 1:
        raise SlebError(f"{path} is one part of a split GGUF ({split.contents()} files); merge it first with "
                        "llama.cpp's `llama-gguf-split --merge`.")
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise SlebError(f"{path} has no general.architecture key; it is not a model GGUF sleb can prune.")
    arch = arch_field.contents()
    count = reader.fields.get(f"{arch}.block_count")
    if count is None:
        raise SlebError(f"{path} has no {arch}.block_count key; sleb cannot tell its blocks apart.")
    source = GgufSource(path, reader, arch, int(count.contents()))
    stray = sorted({b for t in reader.tensors if (b := source.block_of(t.name)) is not None
                    and not 0 <= b < source.block_count})
    if stray:
        raise SlebError(f"{path} has tensors of blocks {stray[:5]} but {arch}.block_count is {source.block_count}.")
    return source
