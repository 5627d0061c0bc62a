"""Which engine runs a model's answers and perplexities, and the engine of each side (dense, pruned).

Both sides of a comparison always run on the same engine: the model's, decided once when it
is loaded. `SLEB_APP_ENGINE` (`DemoConfig.engine`) chooses: `torch`, `llamacpp`, or `auto`
(llama.cpp where llama-cpp-python is installed: the app runs on the CPU). llama.cpp serves
GGUF files only, so a model loaded from a folder of safetensors runs on torch, and says why.
On llama.cpp the dense side is the source GGUF and a pruned side the pruned GGUF, written
once and cached (`sleb.engines.pruned_gguf`); searches, ideal speedups and the healed
column stay on the torch model in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from ..engines import INSTALL_HINT, Engine, GenSettings, LlamaCppEngine, TorchEngine, llamacpp_available, pruned_gguf
from ..errors import SlebError

log = logging.getLogger(__name__)

ENGINE_CHOICES = ("auto", "torch", "llamacpp")
MAX_LLAMACPP_SIDES = 3  # llama.cpp contexts kept per model: dense and the last pruned ones asked for


def resolve_engine(setting: str) -> str:
    """`torch` or `llamacpp` for a `SLEB_APP_ENGINE` value; asking for llama.cpp where it is missing is an error."""
    setting = (setting or "auto").strip().lower()
    if setting not in ENGINE_CHOICES:
        raise SlebError(f"SLEB_APP_ENGINE={setting!r}: choose one of {', '.join(ENGINE_CHOICES)}.")
    if setting == "llamacpp" and not llamacpp_available():
        raise SlebError(f"SLEB_APP_ENGINE=llamacpp, but {INSTALL_HINT}")
    if setting == "auto":
        return "llamacpp" if llamacpp_available() else "torch"
    return setting


def model_engine(setting: str, source) -> tuple[str, str]:
    """(engine, why) for a model from `source` (a `sleb.loading.ModelSource`)."""
    wanted = resolve_engine(setting)
    if wanted == "llamacpp" and not source.gguf_file:
        return "torch", "llama.cpp runs GGUF files; this model is not one, so both sides run on torch"
    if wanted == "llamacpp":
        return "llamacpp", f"llama.cpp on {source.gguf_file} (pruned sides: the GGUF without their blocks)"
    return "torch", "transformers (pruned sides bypass their blocks in the one model in memory)"


def _stop_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]


def new_engine(entry, removed: Sequence[int], kind: str, n_ctx: int = 2048, cache: Path | None = None) -> Engine:
    """A fresh `kind` engine of `entry` without `removed` (llama.cpp: its pruned GGUF, warmed up by two tokens)."""
    key = tuple(sorted(int(b) for b in removed))
    if kind == "torch":
        return TorchEngine(entry.model, entry.tokenizer, key, entry.switch, entry.lock)
    src = Path(entry.source.path) / entry.source.gguf_file
    engine = LlamaCppEngine(pruned_gguf(src, key, cache), n_ctx=n_ctx, stop_ids=_stop_ids(entry.model))
    with engine.lock:  # so that the first visitor's timings are not a cold start
        engine.generate([entry.tokenizer.bos_token_id or 0], GenSettings(max_new_tokens=2), threading.Event(),
                        lambda _: None)
    return engine


def side_engine(entry, removed: Sequence[int] = (), n_ctx: int = 2048) -> Engine:
    """The engine that runs `entry` with `removed` blocks gone, on the model's engine (llama.cpp ones kept)."""
    key = tuple(sorted(int(b) for b in removed))
    if entry.engine_name == "torch":
        return new_engine(entry, key, "torch")
    with entry.engines_lock:
        engine = entry.engines.pop(key, None) or new_engine(entry, key, "llamacpp", n_ctx)
        entry.engines[key] = engine  # most recent last
        while len(entry.engines) > MAX_LLAMACPP_SIDES:
            entry.engines.pop(next(k for k in entry.engines if k))  # the oldest pruned one; freed once unused
        return engine
