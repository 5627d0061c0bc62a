"""Healing text written by the dense model itself (self-generated distillation data).

Offline the only healing text may be a small web sample; the teacher's own samples add
text in the form users meet and carry what the teacher knows. With a chat template the
teacher first writes a user message (sampled after the template's user prefix), then
answers it, and each exchange is rendered with the template; without one it samples free
text from its BOS token. Seeded, so the same settings give the same text; cached in the
sleb cache by the teacher's weight fingerprint and the settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import read_text_file
from ..errors import SlebError
from ..fingerprint import weights_fingerprint
from ..loading import cache_dir, model_device

log = logging.getLogger(__name__)

_PROBE = "\x00sleb-probe\x00"


@dataclass(frozen=True)
class GenerateSpec:
    tokens: int = 49152  # generated tokens wanted (at least this many)
    batch: int = 32  # sequences sampled at once
    prompt_tokens: int = 48  # most tokens of a generated user message
    answer_tokens: int = 192  # most tokens of an answer (or of a free sample, without a chat template)
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    dtype: str = "bf16"  # sampling compute dtype (autocast): bf16 or fp32


def user_prefix(tokenizer) -> str | None:
    """The chat template's text before a user message's content, or None without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], tokenize=False)
    return text[: text.index(_PROBE)] if _PROBE in text else None


def _sample(teacher, tokenizer, prompts: list[str], max_new: int, spec: GenerateSpec) -> list[str]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = model_device(teacher)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.dtype == "bf16"):
        out = teacher.generate(input_ids=enc.input_ids.to(device),
                               attention_mask=enc.attention_mask.to(device),
                               do_sample=True, temperature=spec.temperature, top_p=spec.top_p,
                               max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[enc.input_ids.shape[1]:], skip_special_tokens=True).strip() for row in out]


@torch.no_grad()
def generate_texts(teacher, tokenizer, spec: GenerateSpec, progress: bool = True) -> list[str]:
    """Texts sampled from `teacher` until they hold at least `spec.tokens` tokens."""
    if spec.tokens <= 0 or spec.batch <= 0:
        raise SlebError(f"Generated healing text needs a positive token budget and batch, got {spec.tokens} and "
                        f"{spec.batch}.")
    if spec.dtype not in ("bf16", "fp32"):
        raise SlebError(f"Unknown sampling dtype {spec.dtype!r}; use bf16 or fp32.")
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prefix = user_prefix(tokenizer)
    start = prefix if prefix is not None else (tokenizer.bos_token or tokenizer.eos_token or "")
    if not start:
        raise SlebError("The tokenizer has no chat template, BOS or EOS token to start generated text from; "
                        "heal on a text source (c4, wikitext2 or a file) instead.")
    torch.manual_seed(spec.seed)
    was_training = teacher.training
    teacher.eval()
    texts, total = [], 0
    try:
        with tqdm(total=spec.tokens, desc="generating healing text", unit="tok", disable=not progress) as bar:
            while total < spec.tokens:
                if prefix is None:
                    batch = [start + t for t in _sample(teacher, tokenizer, [start] * spec.batch,
                                                         spec.answer_tokens, spec)]
                else:
                    asks = [q for q in _sample(teacher, tokenizer, [prefix] * spec.batch, spec.prompt_tokens, spec)
                            if q]
                    chats = [[{"role": "user", "content": q}] for q in asks]
                    answers = _sample(teacher, tokenizer, [
                        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats],
                        spec.answer_tokens, spec) if chats else []
                    batch = [tokenizer.apply_chat_template(c + [{"role": "assistant", "content": a}], tokenize=False)
                             for c, a in zip(chats, answers, strict=True)]
                if not batch:
                    raise SlebError("The dense model generated only empty messages; heal on a text source instead.")
                count = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in batch)
                texts += batch
                total += count
                bar.update(count)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
        teacher.train(was_training)
    log.info("Generated %d texts (%d tokens) with the dense model%s", len(texts), total,
             " (chat: a user message, then its answer)" if prefix is not None else " (free samples)")
    return texts


def cached_generated_texts(teacher, tokenizer, spec: GenerateSpec, progress: bool = True) -> tuple[list[str], dict]:
    """`generate_texts`, kept in the sleb cache by teacher fingerprint and settings; returns `(texts, info)`."""
    prefix = user_prefix(tokenizer)
    key = hashlib.sha256(json.dumps([weights_fingerprint(teacher), asdict(spec), prefix],
                                    sort_keys=True).encode()).hexdigest()[:20]
    path = Path(os.environ.get("SLEB_STATE_DIR") or cache_dir() / "state") / "healing-text" / f"generated-{key}.jsonl"
    if path.is_file():
        texts = read_text_file(path).texts
        log.info("Generated healing text from the cache (%s)", path)
    else:
        texts = generate_texts(teacher, tokenizer, spec, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        os.replace(tmp, path)
    info = {"generated": {**asdict(spec), "texts": len(texts), "chat": prefix is not None,
                          "cache": path.name}}
    return texts, info
