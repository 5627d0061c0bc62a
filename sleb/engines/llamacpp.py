"""The llama.cpp engine (llama-cpp-python): a GGUF file run as it is stored, quantised.

llama.cpp cannot bypass blocks of a loaded model, so a pruned side is its own file: the
source GGUF without the removed blocks (`sleb.gguf.write_pruned_gguf`, nothing requantised),
written once into the sleb cache and reused (`pruned_gguf`). Prompts come in as token ids
from the Hugging Face tokenizer (its chat template), never through llama.cpp's own chat
handling, so the two engines answer the same prompt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import SlebError
from ..gguf.verify import default_threads, llamacpp_available
from .base import Engine, GenSettings

log = logging.getLogger(__name__)

_WRITING = threading.Lock()  # one pruned file written at a time (the writer's temporary name is per process)
INSTALL_HINT = ("llama-cpp-python is not installed: `pip install -r requirements.txt` builds it (see "
                "docs/engines.md for the build flags and what the build costs).")


class LlamaCppEngine(Engine):
    """A GGUF file loaded by llama.cpp for streamed generation; perplexity loads its own small context."""

    name = "llamacpp"

    def __init__(self, path: str | os.PathLike, n_ctx: int = 2048, threads: int | None = None,
                 stop_ids: Sequence[int] | None = None):
        if not llamacpp_available():
            raise SlebError(INSTALL_HINT)
        from llama_cpp import Llama

        self.path = Path(path)
        if not self.path.is_file():
            raise SlebError(f"{self.path} does not exist: give the path of a .gguf file.")
        self.threads = threads or default_threads()
        try:
            self.llm = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=self.threads,
                             n_threads_batch=self.threads, verbose=False)
        except (ValueError, RuntimeError) as exc:  # llama-cpp-python's errors for a file it cannot load
            raise SlebError(f"llama.cpp could not load {self.path.name}: {exc}") from exc
        self.stop_ids = set(stop_ids) if stop_ids is not None else {self.llm.token_eos()}
        self.lock = threading.Lock()

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def generate(self, ids, settings: GenSettings, stop: threading.Event, emit) -> None:
        ids = list(ids)
        if len(ids) + settings.max_new_tokens > self.n_ctx:
            raise SlebError(f"The prompt ({len(ids)} tokens) plus {settings.max_new_tokens} new tokens exceeds "
                            f"llama.cpp's context of {self.n_ctx}; shorten the prompt or ask for fewer tokens.")
        self.llm.set_seed(settings.seed)
        self.llm.reset()  # no prompt reuse from an earlier run: every answer pays its own prefill, as on torch
        sampling = ({"temp": settings.temperature, "top_p": settings.top_p, "top_k": 0, "min_p": 0.0}
                    if settings.temperature > 0 else {"temp": 0.0})
        made = 0
        for token in self.llm.generate(ids, reset=False, repeat_penalty=1.0, **sampling):
            if stop.is_set():
                return
            emit([int(token)])
            made += 1
            if made >= settings.max_new_tokens or token in self.stop_ids:
                return

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def perplexity(self, windows: torch.Tensor) -> dict:
        from ..gguf.verify import llamacpp_perplexity

        value, tokens = llamacpp_perplexity(self.path, windows, self.threads), windows.shape[0] * (windows.shape[1] - 1)
        return {"perplexity": value, "predicted_tokens": int(tokens), "windows": int(windows.shape[0]),
                "seqlen": int(windows.shape[1])}

    def close(self) -> None:
        self.llm.close()


def pruned_gguf(src: str | os.PathLike, removed: Sequence[int], cache: Path | None = None) -> Path:
    """The source GGUF without `removed` blocks, written once into the sleb cache (keyed by file and blocks)."""
    from ..gguf import write_pruned_gguf
    from ..loading import cache_dir

    src = Path(src)
    removed = sorted(int(b) for b in removed)
    if not removed:
        return src
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{removed}".encode()).hexdigest()[:16]
    out = (cache or cache_dir() / "gguf") / f"{src.stem}-without-{len(removed)}-{key}.gguf"
    with _WRITING:
        if out.is_file():
            return out
        log.info("Writing %s without blocks %s to %s (once; reused afterwards)", src.name, removed, out)
        write_pruned_gguf(src, removed, out, progress=False)
    return out
