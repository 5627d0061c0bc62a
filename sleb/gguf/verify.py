"""Check a written GGUF the way every checkpoint is checked, and delete it when it fails.

(a) transformers' GGUF reader loads it (dequantized) and its logits must equal those of the
    dense model with the removed blocks bypassed (`sleb.verify.Verifier`, same tolerances);
(b) when `llama_cpp` is importable, llama.cpp loads it and its perplexity on a few WikiText-2
    windows must agree with transformers' on the same token ids and file: mean NLL within `NLL_TOLERANCE`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import SlebError

log = logging.getLogger(__name__)

# Largest relative difference of the mean NLL per token (log-perplexity), llama.cpp against transformers.
# llama.cpp multiplies quantised weights with activations quantised to 8 bits, so on SmolLM2's Q4_1 file its
# perplexity sits 0.28% from transformers' (dequantized, fp32) dense, 0.62% / 1.01% with 20% / 30% of the blocks
# removed (scripts/bench_gguf.py, 8 x 512 tokens) and 2.2% on a model broken by removing its last blocks
# (perplexity 3.4e8): a perplexity gate fails correct files. In NLL these are 0.08%, 0.14%, 0.21%, 0.11%;
# a file llama.cpp reads wrongly is off by far more, or does not load.
NLL_TOLERANCE = 0.005
PPL_WINDOWS = 4
PPL_SEQLEN = 512


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def wikitext_windows(tokenizer, windows: int = PPL_WINDOWS, seqlen: int = PPL_SEQLEN, data_root=None):
    """The first `windows` consecutive WikiText-2 test windows of `seqlen` token ids."""
    from ..evaluation.heldout import ppl_text
    from ..evaluation.perplexity import token_windows

    text, _ = ppl_text("wikitext2", data_root)
    return token_windows(tokenizer, text, seqlen, windows)


def default_threads() -> int:
    """llama.cpp's threads: $SLEB_LLAMACPP_THREADS, else torch's (the same CPU budget as the torch engine)."""
    return int(os.environ.get("SLEB_LLAMACPP_THREADS") or torch.get_num_threads())


def llamacpp_perplexity(path: str | os.PathLike, windows: torch.Tensor, threads: int | None = None) -> float:
    """Perplexity that llama.cpp gives the GGUF at `path` on these token-id windows (same protocol as sleb's)."""
    from llama_cpp import Llama

    seqlen = int(windows.shape[1])
    llm = Llama(model_path=str(path), n_ctx=seqlen, n_batch=seqlen, logits_all=True, verbose=False,
                n_threads=threads or default_threads())
    total = 0.0
    try:
        for row in windows.tolist():
            llm.reset()
            llm.eval(row)
            logits = np.asarray(llm.scores[: seqlen - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            total += float((logz - logits[np.arange(seqlen - 1), row[1:]]).sum())
    finally:
        llm.close()
    return math.exp(total / (windows.shape[0] * (seqlen - 1)))


def check_llamacpp(path: Path, windows: torch.Tensor) -> dict:
    """llama.cpp's perplexity on the file against transformers' on the same file (its GGUF reader, dequantized)."""
    from transformers import AutoModelForCausalLM

    from ..evaluation.perplexity import perplexity

    if not llamacpp_available():
        return {"llamacpp": "skipped (llama_cpp is not installed)"}
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    reference = perplexity(model, windows)["perplexity"]
    del model
    try:
        got = llamacpp_perplexity(path, windows)
    except Exception as exc:  # llama.cpp raises ValueError / RuntimeError on a file it cannot load
        raise SlebError(f"llama.cpp could not load or run the written GGUF {path.name}: {exc}") from exc
    rel = abs(got - reference) / reference
    nll_rel = abs(math.log(got) - math.log(reference)) / math.log(reference)
    result = {"llamacpp": "passed" if nll_rel <= NLL_TOLERANCE else "failed", "llamacpp_perplexity": got,
              "transformers_perplexity": reference, "relative_difference": rel, "nll_relative_difference": nll_rel,
              "nll_tolerance": NLL_TOLERANCE, "windows": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
              "data": "wikitext2 test"}
    if result["llamacpp"] != "passed":
        raise SlebError(f"llama.cpp's perplexity on the written GGUF ({got:.3f}) differs from transformers' "
                        f"({reference:.3f}): mean NLL {100 * nll_rel:.2f}% apart (> {100 * NLL_TOLERANCE:.1f}%).")
    log.info("llama.cpp perplexity %.3f vs transformers %.3f (%.2f%%; NLL %.2f%%)", got, reference, 100 * rel,
             100 * nll_rel)
    return result


def verify_gguf(path: str | os.PathLike, verifier=None, windows: torch.Tensor | None = None,
                saved_dtype: torch.dtype | None = None) -> dict:
    """Check (a) with `verifier` (a `sleb.verify.Verifier`; `saved_dtype` sets its tolerance) and (b) on
    `windows`; either may be None to skip it. On failure delete the file and raise SlebError."""
    path = Path(path)
    result = {}
    try:
        if verifier is not None:
            result["transformers"] = verifier(path.parent, saved_dtype, gguf_file=path.name)
        if windows is not None:
            result.update(check_llamacpp(path, windows))
    except Exception:
        path.unlink(missing_ok=True)
        log.error("Deleted %s: it failed verification", path)
        raise
    return result
