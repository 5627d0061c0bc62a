"""Calibration windows: token sequences of fixed length that the search scores blocks on.

Three protocols, all seeded and recorded:

- `windows` (the paper's): `nsamples` windows of `seqlen` tokens at random offsets in
  the joined, tokenized text. Warns when the text is too short for them not to overlap.
- `tokens` (an explicit budget): consecutive non-overlapping windows of `seqlen`
  tokens from the start of the text until `tokens` tokens are covered.
- `reference` (the SLEB reference code's): the source's rows shuffled with the seed
  (the permutation `datasets.Dataset.shuffle(seed)` uses), the first `rows` of them
  joined ("\n\n" for WikiText-2, " " otherwise) and tokenized as the tokenizer does
  by default, then cut into consecutive windows of `seqlen` tokens (the rest dropped).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

import numpy as np
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
    rows: int | None = None  # when set, use the reference code's protocol on this many shuffled rows
    data_dir: str | None = None

    @property
    def protocol(self) -> str:
        if self.rows:
            return "reference"
        return "tokens" if self.tokens else "windows"


# On a CPU, unless told otherwise: the calibration study's choice for SmolLM2 (README, "Calibration study").
CPU_TOKENS = 2048
CPU_SEQLEN = 128


def device_default(device: str, source: str = "c4", seed: int = 0, data_dir: str | None = None) -> CalibrationSpec:
    """The default calibration for `device`: the paper's 128 random windows of 2048 tokens on a
    GPU; on a CPU, where that search takes a day, `CPU_TOKENS` consecutive tokens in windows of
    `CPU_SEQLEN` (the calibration study's budget)."""
    if str(device).startswith("cpu"):
        return CalibrationSpec(source=source, seed=seed, tokens=CPU_TOKENS, seqlen=CPU_SEQLEN, data_dir=data_dir)
    return CalibrationSpec(source=source, seed=seed, data_dir=data_dir)


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
    if spec.tokens and spec.rows:
        raise SlebError("Give either a token budget or a number of rows (the reference protocol), not both.")

    docs = calibration_documents(spec.source, spec.data_dir)
    if spec.protocol == "reference":
        return _reference_calibration(tokenizer, spec, docs, seqlen)
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
        _warn_overlap(ids.numel(), spec.nsamples * seqlen, capped=len(texts) < len(docs.texts))
        gen = torch.Generator().manual_seed(spec.seed)
        starts = torch.randint(0, ids.numel() - seqlen, (spec.nsamples,), generator=gen)
        windows = torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
    return _finish(windows, spec, seqlen, docs.source, len(texts), JOIN)


def _warn_overlap(pool: int, requested: int, capped: bool) -> None:
    """Random windows drawn from fewer tokens than they hold must repeat tokens: say how many."""
    if not capped and requested > pool:
        log.warning(
            "Calibration asks for %d tokens of random windows, but its text holds only %d tokens: the windows "
            "overlap and at least %d tokens (%.0f%%) are repeats. Use fewer or shorter windows, or more text.",
            requested, pool, requested - pool, 100 * (requested - pool) / requested,
        )


def reference_rows(texts: list[str], rows: int, seed: int) -> list[str]:
    """The first `rows` rows after shuffling with `seed`, as `datasets.Dataset.shuffle(seed=seed)` orders them."""
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order[:rows]]


def _reference_calibration(tokenizer, spec: CalibrationSpec, docs, seqlen: int) -> Calibration:
    join = "\n\n" if spec.source == "wikitext2" else " "
    chosen = reference_rows(docs.texts, spec.rows, spec.seed)
    ids = tokenizer(join.join(chosen), return_tensors="pt").input_ids[0]
    count = ids.numel() // seqlen
    if count < 1:
        raise SlebError(
            f"{spec.rows} shuffled rows of {docs.source} give {ids.numel()} tokens, fewer than one window of "
            f"{seqlen}; use more rows or a smaller --seqlen."
        )
    return _finish(ids[: count * seqlen].view(count, seqlen), spec, seqlen, docs.source, len(chosen), join)


def _finish(windows: torch.Tensor, spec: CalibrationSpec, seqlen: int, source: str, documents: int,
            join: str) -> Calibration:
    # The shape is hashed too: the same consecutive tokens cut into other windows are other calibration data.
    digest = hashlib.sha256(f"{tuple(windows.shape)}".encode())
    digest.update(windows.numpy().tobytes())
    fingerprint = digest.hexdigest()[:16]
    info = {
        **{k: v for k, v in asdict(spec).items() if k != "data_dir"},
        "seqlen": seqlen,
        "protocol": spec.protocol,
        "data": source,
        "documents_used": documents,
        "join": repr(join),
        "num_windows": int(windows.shape[0]),
        "num_tokens": int(windows.numel()),
        "fingerprint": fingerprint,
    }
    log.info("Calibration (%s): %d windows x %d tokens from %s", spec.protocol, windows.shape[0], seqlen, source)
    return Calibration(windows=windows, info=info)
