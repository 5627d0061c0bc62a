"""What the demo runs: removal orders, streamed generation with timings, perplexity; no UI here.

Dense and pruned are the same model in memory: the pruned side runs with its removed
blocks bypassed by `BlockSwitch`. Every use of a model holds its lock, so the switch is
never shared by two runs at once. Generation runs in a worker thread that owns the
lock and streams tokens through a queue; the caller can stop it with an event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from ..calibration import CalibrationSpec, model_context
from ..errors import SlebError
from ..evaluate import ppl_text
from ..perplexity import perplexity, token_windows
from ..prune import METHODS, find_removal, search_key, state_dir
from ..search import SearchResult, SearchState
from .models import DemoConfig, LoadedModel, ModelStore

log = logging.getLogger(__name__)

EARLY_BARRIER = LATTER_BARRIER = 1  # block 0 is never removed, so the KV cache's length comes from a live block


def max_removable(total: int, max_ratio: float) -> int:
    return max(0, min(int(max_ratio * total), total - EARLY_BARRIER - LATTER_BARRIER))


def blocks_to_remove(total: int, ratio: float | None, blocks: int | None, max_ratio: float) -> int:
    """The block count asked for: `blocks` when given (> 0), else round(ratio x total); checked against the cap."""
    k = int(blocks) if blocks else round((ratio or 0) * total)
    limit = max_removable(total, max_ratio)
    if k < 0:
        raise SlebError(f"Cannot remove {k} blocks; choose 0 to {limit}.")
    if k > limit:
        raise SlebError(f"Removing {k} of {total} blocks leaves too few: this demo removes at most {limit} "
                        f"({max_ratio:.0%}, keeping the first and last block). Lower the ratio or the block count.")
    return k


# --- removal orders -------------------------------------------------------------------------------------------------


@dataclass
class SearchStep:
    """Progress of a search: `done` of `total` rounds; `result` is set on the last step."""

    done: int
    total: int
    result: SearchResult | None = None
    source: str = ""


def removal_steps(store: ModelStore, entry: LoadedModel, method: str, k: int,
                  spec: CalibrationSpec) -> Iterator[SearchStep]:
    """Find the removal order for `k` blocks, yielding after each SLEB round so the caller can show and cancel.

    The zoo's order is used where it covers `k`, then an order computed earlier; otherwise
    SLEB runs round by round through `find_removal` (its state file makes every finished
    round free to reuse, and the order is nested, so a larger `k` later only adds rounds).
    A baseline is computed once up to the demo's cap. Each round holds the model's lock,
    so generation for other users runs between rounds.
    """
    if method not in METHODS:
        raise SlebError(f"Unknown method {method!r}; choose one of: {', '.join(METHODS)}.")
    for result, source in ((store.zoo_result(entry, method), "zoo"), (entry.results.get(method), "cached search")):
        if result is not None and result.max_remove >= k:
            yield SearchStep(k, k, result, result.settings.get("source") or source)
            return
    calibration = entry.calibration(spec)
    if method != "sleb":
        with entry.lock:
            result = find_removal(entry.model, calibration, max_removable(entry.num_blocks, store.config.max_ratio),
                                  method, early_barrier=EARLY_BARRIER, latter_barrier=LATTER_BARRIER, progress=False)
        entry.results[method] = result
        yield SearchStep(k, k, result, "computed")
        return
    # find_removal's own state file, named here so the rounds already done can be read and skipped.
    key = search_key(entry.model, calibration, "sleb", EARLY_BARRIER, LATTER_BARRIER, 0, False)
    path = state_dir() / f"sleb-{key}.json"
    done = min(len(SearchState(path, key).load()), k)
    for j in range(max(done, 1), k + 1):
        with entry.lock:
            result = find_removal(entry.model, calibration, j, "sleb", early_barrier=EARLY_BARRIER,
                                  latter_barrier=LATTER_BARRIER, progress=False, state_path=path)
        if result.max_remove > getattr(entry.results.get("sleb"), "max_remove", 0):
            entry.results["sleb"] = result
        yield SearchStep(j, k, result if j == k else None, "computed" if k > done else "cached search")


# --- generation -----------------------------------------------------------------------------------------------------


@dataclass
class GenSettings:
    """Decoding settings, the same for both sides: greedy when temperature is 0, else seeded sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 0


@dataclass
class GenStats:
    """Measured on one side: tokens, time to first token, decode speed (after the first token), total time."""

    tokens: int = 0
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    total_s: float | None = None
    wait_s: float = 0.0  # waiting for the model (another user's run)
    done: bool = False

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def encode_prompt(entry: LoadedModel, prompt: str, max_tokens: int, max_new_tokens: int = 0) -> torch.Tensor:
    """Token ids of the prompt, with the chat template for chat models; refuses over-long prompts."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise SlebError("Type a prompt first.")
    tokenizer = entry.tokenizer
    if entry.is_chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    n = ids.shape[1]
    if n > max_tokens:
        raise SlebError(f"The prompt is {n} tokens long{' with the chat template' if entry.is_chat else ''}; "
                        f"the limit is {max_tokens}. Shorten it.")
    context = model_context(entry.model.config)
    if context and n + max_new_tokens > context:
        raise SlebError(f"The prompt ({n} tokens) plus {max_new_tokens} new tokens exceeds the model's context of "
                        f"{context}; shorten the prompt or ask for fewer tokens.")
    return ids


class _QueueStreamer(BaseStreamer):
    """Puts each new token on a queue with its time; the first `put` (the prompt) is skipped."""

    def __init__(self, events: queue.Queue):
        self.events = events
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.events.put(("token", value.reshape(-1).tolist(), time.perf_counter()))

    def end(self):
        self.events.put(("end", None, time.perf_counter()))


class _StopOnEvent:
    """A stopping criterion: stop when the event is set (the user pressed Stop or left)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _generate(entry: LoadedModel, input_ids: torch.Tensor, removed: Sequence[int], settings: GenSettings,
              stop: threading.Event, events: queue.Queue) -> None:
    from transformers import StoppingCriteriaList

    tokenizer = entry.tokenizer
    pad = entry.model.generation_config.pad_token_id
    pad = pad if pad is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                       else tokenizer.eos_token_id)
    sampling = ({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
                if settings.temperature > 0 else {"do_sample": False})
    try:
        with entry.lock:
            events.put(("start", None, time.perf_counter()))
            if settings.temperature > 0:
                torch.manual_seed(settings.seed)
            with entry.switch.state(skip=removed), torch.inference_mode():
                entry.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=settings.max_new_tokens, streamer=_QueueStreamer(events),
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), pad_token_id=pad, **sampling)
    except Exception as exc:  # handed to the caller's thread, which raises it
        events.put(("error", exc, time.perf_counter()))


def stream_generate(entry: LoadedModel, input_ids: torch.Tensor, removed: Sequence[int] = (),
                    settings: GenSettings | None = None,
                    stop: threading.Event | None = None) -> Iterator[tuple[str, GenStats]]:
    """Generate with `removed` blocks bypassed, yielding (text so far, stats) per token, then once finished."""
    settings = settings or GenSettings()
    stop = stop or threading.Event()
    events: queue.Queue = queue.Queue()
    worker = threading.Thread(target=_generate, args=(entry, input_ids, list(removed), settings, stop, events),
                              daemon=True, name="sleb-generate")
    requested = time.perf_counter()
    worker.start()
    stats, ids = GenStats(), []
    start = first = last = requested
    try:
        while True:
            kind, value, at = events.get()
            if kind == "error":
                raise value
            if kind == "start":
                start = at
                stats.wait_s = at - requested
            elif kind == "token":
                ids += value
                if stats.tokens == 0:
                    first = at
                    stats.ttft_s = at - start
                last, stats.tokens = at, len(ids)
                yield entry.tokenizer.decode(ids, skip_special_tokens=True), stats
            elif kind == "end":
                stats.total_s = at - start
                if stats.tokens > 1 and last > first:
                    stats.decode_tok_s = (stats.tokens - 1) / (last - first)
                stats.done = True
                yield entry.tokenizer.decode(ids, skip_special_tokens=True), stats
                return
    finally:
        stop.set()  # the caller stopped reading (Stop, or an error): end the worker early


def speedup(dense: GenStats, pruned: GenStats) -> dict:
    """Pruned over dense: decode speed ratio, and dense/pruned for time to first token and total time."""

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    return {"decode": ratio(pruned.decode_tok_s, dense.decode_tok_s), "ttft": ratio(dense.ttft_s, pruned.ttft_s),
            "total": ratio(dense.total_s, pruned.total_s)}


# --- perplexity -----------------------------------------------------------------------------------------------------


def perplexity_of(entry: LoadedModel, removed: Sequence[int], config: DemoConfig) -> dict:
    """WikiText-2 perplexity on the first few windows, with `removed` bypassed; cached per removed set."""
    key = tuple(sorted(removed))
    if key in entry.ppl:
        return entry.ppl[key]
    if entry.ppl_windows is None:
        text, source = ppl_text("wikitext2")
        seqlen = min(config.ppl_seqlen, model_context(entry.model.config) or config.ppl_seqlen)
        # The first windows only need the start of the text: tokenize a generous prefix, not all 1.3 MB.
        windows = token_windows(entry.tokenizer, text[: 40 * seqlen * config.ppl_windows], seqlen, config.ppl_windows)
        entry.ppl_windows = (windows, source)
    windows, source = entry.ppl_windows
    with entry.lock, entry.switch.state(skip=key):
        result = perplexity(entry.model, windows)
    entry.ppl[key] = {**result, "data": f"wikitext2 test ({source})"}
    return entry.ppl[key]
