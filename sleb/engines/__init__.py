"""Engines: one model ready to run, on transformers or on llama.cpp, behind one interface (`Engine`).

- `base`: `Engine` (generate streaming from token ids, count tokens, perplexity on token ids)
  and `GenSettings`.
- `torch_engine`: `TorchEngine`, transformers' `generate`; pruned sides bypass blocks in one model.
- `llamacpp`: `LlamaCppEngine` (llama-cpp-python) on a GGUF file; `pruned_gguf` writes a pruned
  GGUF once into the sleb cache.
- `bench`: `measure_llamacpp_speed`, dense vs pruned GGUF on llama.cpp (`sleb bench --engine llamacpp`).

See docs/engines.md.
"""

from .base import Engine, GenSettings
from .llamacpp import INSTALL_HINT, LlamaCppEngine, llamacpp_available, pruned_gguf
from .torch_engine import TorchEngine

__all__ = ["INSTALL_HINT", "Engine", "GenSettings", "LlamaCppEngine", "TorchEngine", "llamacpp_available",
           "pruned_gguf"]
