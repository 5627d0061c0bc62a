"""Perplexity on WikiText-2 and C4 with the paper's protocol, from local files or the Hub.

- WikiText-2 test: rows joined with "\\n\\n", every full window.
- C4 validation: the first 1,100 documents joined with " ", at most 256 windows.

Windows are non-overlapping, `seqlen` tokens (2048, or the model's context if smaller).
Offline the local copies are read (for C4, the sample's evaluation rows, which never
overlap its calibration rows); the result records exactly what was evaluated.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..calibration import model_context
from ..data import C4_EVAL_ROWS, LOCAL_FILES, data_dir, hub_documents, read_text_file
from ..errors import SlebError
from .perplexity import perplexity, token_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PplSet:
    local_key: str
    hub_key: str
    rows: slice | None
    join: str
    max_windows: int | None


PPL_SETS = {
    "wikitext2": PplSet("wikitext2-test", "wikitext2-test", None, "\n\n", None),
    "c4": PplSet("c4", "c4-validation", slice(0, C4_EVAL_ROWS), " ", 256),
}


def parse_names(text: str | list[str] | None, known, what: str) -> list[str]:
    """Split a comma list and check every name is known."""
    if not text:
        return []
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SlebError(f"Unknown {what} {', '.join(unknown)}; known: {', '.join(known)}.")
    return names


def ppl_text(name: str, data_root: str | os.PathLike | None = None) -> tuple[str, str]:
    """The evaluation text of a perplexity set and where it came from."""
    spec = PPL_SETS[name]
    local = data_dir(data_root) / LOCAL_FILES[spec.local_key]
    if local.is_file():
        docs = read_text_file(local, spec.rows)
    else:
        log.info("%s not found locally (%s); loading it from the Hub", name, local)
        docs = hub_documents(spec.hub_key)
        if spec.rows is not None:
            docs.texts = docs.texts[spec.rows]
    return spec.join.join(docs.texts), docs.source


def evaluate_ppl(model, tokenizer, names, seqlen: int = 2048, max_windows: int | None = None,
                 batch_size: int = 1, data_root=None, progress: bool = True) -> dict:
    """Perplexity on each named set; `max_windows` caps every set (for quick runs)."""
    limit = model_context(model.config)
    if limit and seqlen > limit:
        log.warning("seqlen %d is longer than the model's context (%d tokens); clipping to %d.", seqlen, limit, limit)
        seqlen = limit
    results = {}
    for name in parse_names(names, PPL_SETS, "perplexity set"):
        spec = PPL_SETS[name]
        text, source = ppl_text(name, data_root)
        cap = min(c for c in (spec.max_windows, max_windows) if c) if (spec.max_windows or max_windows) else None
        windows = token_windows(tokenizer, text, seqlen, cap)
        result = perplexity(model, windows, batch_size=batch_size, progress=progress)
        results[name] = {**result, "data": source, "join": repr(spec.join), "max_windows": cap}
        log.info("%s perplexity %.3f (%d windows x %d tokens)", name, result["perplexity"], result["windows"], seqlen)
    return results
