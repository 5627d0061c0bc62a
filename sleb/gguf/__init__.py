"""GGUF in, GGUF out: remove blocks from a GGUF file without requantising (see docs/gguf.md).

- `open_gguf(path)`: read and check a GGUF (`sleb.gguf.read`).
- `write_pruned_gguf(src, removed_blocks, out) -> record`: the pruned file (`sleb.gguf.write`).
- `verify_gguf(...)`: reload it with transformers and llama.cpp (`sleb.gguf.verify`).
"""

from .read import GgufSource, open_gguf
from .write import write_pruned_gguf

__all__ = ["GgufSource", "open_gguf", "write_pruned_gguf"]
