"""Calibration windows: token sequences of fixed length that the search scores blocks on.

Two protocols, both seeded and recorded:

- `windows` (the paper's): `nsamples` windows of `seqlen` tokens at random offsets in
  the joined, tokenized text.
- `tokens` (an explicit budget): consecutive non-overlapping windows of `seqlen`
  tokens from the start of the text until `tokens` tokens are covered.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

import torch

from .data import calibration_documents
from .errors import SlebError

log = logging.getLogger(__name__)

JOIN = "\n\n"


@dataclass
class CalibrationSpec:
    source: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    tokens: int | None = None  # when set, use the token-budget protocol instead of nsamples
    data_dir: str | None = None

    @property
    def protocol(self) -> str:
        return "tokens" if self.tokens else "windows"


@dataclass
class Calibration:
    windows: torch.Tensor  # [n, seqlen], int64
    info: dict  # everything needed to reproduce it, plus a fingerprint of the tokens


def model_context(model_config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def build_calibration(tokenizer, spec: CalibrationSpec, model_config=None) -> Calibration:
    """Tokenize the source and cut it into windows according to `spec`."""
    if spec.seqlen < 2:
        raise SlebError(f"seqlen must be at least 2 tokens, got {spec.seqlen}.")
    limit = model_context(model_config) if model_config is not None else None
    seqlen = spec.seqlen
    if limit and seqlen > limit:
        log.warning("seqlen %d exceeds the model's context of %d tokens; using %d.", seqlen, limit, limit)
        seqlen = limit
    if spec.tokens is not None and spec.tokens < seqlen:
        raise SlebError(f"A token budget of {spec.tokens} is less than one window of {seqlen} tokens.")
    if spec.tokens is None and spec.nsamples < 1:
        raise SlebError(f"nsamples must be at least 1, got {spec.nsamples}.")

    docs = calibration_documents(spec.source, spec.data_dir)
    needed = spec.tokens or spec.nsamples * seqlen
    texts, chars = [], 0
    for text in docs.texts:  # cap the text tokenized: a whole C4 shard is far more than needed
        texts.append(text)
        chars += len(text)
        if chars > 40 * needed:
            break
    ids = tokenizer(JOIN.join(texts), return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() < seqlen + (0 if spec.tokens else 1):
        raise SlebError(
            f"Calibration text from {docs.source} has {ids.numel()} tokens, shorter than one window of {seqlen}; "
            "use more text or a smaller --seqlen."
        )
    if spec.tokens:
        count = min(spec.tokens // seqlen, ids.numel() // seqlen)
        if count * seqlen < spec.tokens:
            log.warning("Calibration text holds only %d full windows (%d tokens).", count, count * seqlen)
        windows = ids[: count * seqlen].view(count, seqlen)
    else:
        gen = torch.Generator().manual_seed(spec.seed)
        starts = torch.randint(0, ids.numel() - seqlen, (spec.nsamples,), generator=gen)
        windows = torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
    fingerprint = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
    info = {
        **{k: v for k, v in asdict(spec).items() if k != "data_dir"},
        "seqlen": seqlen,
        "protocol": spec.protocol,
        "data": docs.source,
        "documents_used": len(texts),
        "join": repr(JOIN),
        "num_windows": int(windows.shape[0]),
        "num_tokens": int(windows.numel()),
        "fingerprint": fingerprint,
    }
    log.info("Calibration: %d windows x %d tokens from %s", windows.shape[0], seqlen, docs.source)
    return Calibration(windows=windows, info=info)
