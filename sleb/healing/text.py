"""Healing text: token windows from a pool disjoint from every evaluation set, plus a held-out slice.

The default pool is the calibration part of the C4 sample (rows 1100 onward; evaluation
uses rows 0-1099) or, without the local copy, C4 train from the Hub; a user file works too.
`generated` is text the dense model writes itself (`sleb.healing.generated`), alone or
before a text source (`c4+generated`). The last `heldout` windows are never trained on:
they measure NLL and KL before and after.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..calibration import JOIN
from ..data import calibration_documents
from ..errors import SlebError
from .generated import GenerateSpec, cached_generated_texts

GENERATED = "generated"

log = logging.getLogger(__name__)


@dataclass
class HealData:
    train: torch.Tensor  # [n, seqlen] windows for fitting / training
    heldout: torch.Tensor  # [m, seqlen] windows never trained on
    info: dict


def split_source(source: str) -> tuple[bool, str | None]:
    """`(with generated text, text source or None)` from e.g. `c4`, `generated` or `c4+generated`."""
    if Path(source).exists():
        return False, source
    parts = source.split("+")
    texts = [p for p in parts if p != GENERATED]
    if len(texts) > 1 or len(parts) > 2 or not parts[0]:
        raise SlebError(f"Healing source {source!r}: use one text source (c4, wikitext2 or a file), "
                        f"{GENERATED!r}, or one of them plus {GENERATED!r} (e.g. c4+{GENERATED}).")
    return GENERATED in parts, texts[0] if texts else None


def heal_data(tokenizer, source: str = "c4", seqlen: int = 512, heldout: int = 4, data_dir=None, teacher=None,
              generate: GenerateSpec | None = None, progress: bool = True) -> HealData:
    """Tokenize the pool once and cut it into consecutive, non-overlapping windows."""
    if seqlen < 8:
        raise SlebError(f"The healing window must be at least 8 tokens, got {seqlen}.")
    with_generated, text_source = split_source(source)
    texts, names, extra = [], [], {}
    if with_generated:
        if teacher is None:
            raise SlebError(f"Healing source {source!r} needs the dense model to write text; pass it as `teacher`.")
        generated, extra = cached_generated_texts(teacher, tokenizer, generate or GenerateSpec(), progress)
        texts += generated
        names.append(f"{GENERATED} by the dense model ({len(generated)} texts, seed {extra['generated']['seed']})")
    if text_source is not None:
        docs = calibration_documents(text_source, data_dir)
        texts += docs.texts
        names.append(docs.source)
    ids = tokenizer(JOIN.join(texts), return_tensors="pt", add_special_tokens=False).input_ids[0]
    count = ids.numel() // seqlen
    if count < heldout + 1:
        raise SlebError(
            f"Healing text from {' + '.join(names)} has {ids.numel()} tokens: fewer than {heldout + 1} windows of "
            f"{seqlen}. Use more text or a smaller --heal-seqlen."
        )
    windows = ids[: count * seqlen].view(count, seqlen)
    train, held = windows[: count - heldout], windows[count - heldout:]
    info = {
        "data": " + ".join(names),
        "join": repr(JOIN),
        "seqlen": seqlen,
        "pool_windows": int(train.shape[0]),
        "pool_tokens": int(train.numel()),
        "heldout_windows": int(held.shape[0]),
        "heldout_tokens": int(held.numel()),
        "fingerprint": hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16],
        "disjoint_from": "WikiText-2 test and the C4 evaluation rows (0-1099) / C4 validation",
        **extra,
    }
    log.info("Healing pool: %d windows x %d tokens (%d held out) from %s", train.shape[0], seqlen,
             held.shape[0], " + ".join(names))
    return HealData(train=train, heldout=held, info=info)


def budget_windows(pool: int, budget_tokens: int, seqlen: int) -> tuple[int, int]:
    """Windows a token budget takes, and how many of its tokens repeat pool tokens (a warning if any)."""
    wanted = max(1, -(-budget_tokens // seqlen))
    repeated = max(0, wanted - pool) * seqlen
    if repeated:
        log.warning("The healing budget (%d tokens) is larger than the pool (%d tokens): %d tokens repeat "
                    "(%.1f passes over the pool).", wanted * seqlen, pool * seqlen, repeated, wanted / pool)
    return wanted, repeated
