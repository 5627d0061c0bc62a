"""What the demo runs: removal orders, streamed generation with timings, perplexity; no UI here.

Dense and pruned are the same model in memory: the pruned side runs with its removed
blocks bypassed by `BlockSwitch`. Every use of a model holds its lock, so the switch is
never shared by two runs at once. Generation runs in a worker thread that owns the
lock and streams tokens through a queue; the caller can stop it with an event.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from ..calibration import CalibrationSpec, model_context
from ..criteria import base_method, get_criterion, method_forwards, refine_seeds
from ..engines import Engine, GenSettings
from ..errors import SlebError
from ..evaluation.heldout import ppl_text
from ..evaluation.perplexity import token_windows
from ..files import search_state_path
from ..orders import find_order
from ..prune import find_removal, refine_removal, resolve_method, search_key
from ..search import SearchResult, SearchState
from ..speed import decode_flops, prefill_flops
from .models import DemoConfig, LoadedModel, ModelStore, merged_result
from .sides import side_engine

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
    """Progress of a search: `done` of `total` steps (SLEB's rounds, then a refinement); `result` is set on the
    last step; `status` says what has run and what runs next."""

    done: int
    total: int
    result: SearchResult | None = None
    source: str = ""
    status: str = ""


def _order_for(store: ModelStore, entry: LoadedModel, method: str, k: int) -> tuple[SearchResult | None, str]:
    """An order that is already known: shipped with sleb, then the zoo's, then one computed here earlier.

    A refined method's sets are per count: its shipped file holds one per count, the zoo's variants'
    are merged (`merged_result`), and so are the counts refined here."""
    shipped = find_order(entry.base_id, method, entry.num_blocks)
    for result, source in ((shipped, "shipped"), (store.zoo_result(entry, method), "zoo"),
                           (entry.results.get(method), "cached search")):
        if result is not None and result.covers(k):
            return result, result.settings.get("source") or source
    return None, ""


def _search_state(entry: LoadedModel, calibration) -> SearchState:
    """find_removal's own state file, named here so the rounds already done can be read and skipped."""
    key = search_key(entry.model, calibration, "sleb", EARLY_BARRIER, LATTER_BARRIER, 0, False)
    return SearchState(search_state_path("sleb", key), key)


def search_plan(store: ModelStore, entry: LoadedModel, method: str, k: int, spec: CalibrationSpec) -> dict:
    """What finding the set for `k` blocks costs: 0 rounds when it is known, else the rounds still to run (a
    refined method: SLEB's, then one refinement step), estimated full forward passes and time here."""
    criterion = get_criterion(resolve_method(method)[0])  # an unknown method is an error here, never a free plan
    result, source = _order_for(store, entry, method, k)
    if result is not None or k == 0:
        return {"rounds": 0, "seconds": 0.0, "source": source or "none"}
    tokens = spec.tokens or spec.nsamples * spec.seqlen
    done = 0
    if criterion.resumable:
        done = len(_search_state(entry, entry.calibration(spec)).load()) if entry.has_calibration(spec) else 0
    rounds = max(0, k - done) if criterion.resumable else 1
    refine = refine_seeds(method) is not None
    forwards = method_forwards(method, entry.num_blocks, k, min(done, k), EARLY_BARRIER, LATTER_BARRIER)
    seconds = forwards * tokens / entry.forward_tok_s
    return {"rounds": rounds + refine, "search_rounds": rounds, "refine": refine, "forwards": round(forwards, 1),
            "seconds": round(seconds, 1), "tokens": tokens, "source": "search",
            "forward_tok_s": round(entry.forward_tok_s, 1)}


def plan_text(plan: dict, method: str, k: int) -> str:
    if plan["rounds"] == 0:
        return f"Order for {k} blocks: {plan['source']} (no search needed)." if k else "Nothing removed."
    minutes = plan["seconds"] / 60
    when = f"about {minutes:.0f} min" if minutes >= 1 else f"about {plan['seconds']:.0f} s"
    cost = (f"{when} on this machine now ({plan['forwards']:,.0f} forward passes' worth; a forward pass runs at "
            f"{plan['forward_tok_s']:,.0f} tokens/s here; other visitors share the CPU)")
    if not plan.get("refine"):
        return (f"**{method} must search first**: {plan['rounds']} round(s) on {plan['tokens']:,} calibration "
                f"tokens, {cost}. Stop cancels it after the current round; finished rounds are kept.")
    return (f"**{method} must search first**: {plan['search_rounds']} round(s) of {base_method(method)}, then "
            f"every cheap criterion's set for {k} blocks as seeds and one swap-refinement step from the best of "
            f"them, on {plan['tokens']:,} calibration tokens, {cost}. The refinement runs as one step that holds "
            f"the model (other visitors wait meanwhile), about as long as the rounds together. Stop cancels it "
            f"between rounds; finished rounds and accepted swaps are kept. A refined set is for {k} blocks only: "
            f"another count refines again.")


def _base_steps(store: ModelStore, entry: LoadedModel, name: str, k: int, calibration,
                total: int) -> Iterator[SearchStep]:
    """The criterion's own search for `k` blocks: SLEB round by round (resumed from its state file), another
    criterion once up to the demo's cap. Each yields a step; the last holds the result."""
    if not get_criterion(name).resumable:
        with entry.turn(), entry.lock:
            result = find_removal(entry.model, calibration, max_removable(entry.num_blocks, store.config.max_ratio),
                                  name, early_barrier=EARLY_BARRIER, latter_barrier=LATTER_BARRIER, progress=False)
        entry.results[name] = result
        yield SearchStep(1, total, result, "computed", f"{name}: computed once, up to the demo's cap.")
        return
    state = _search_state(entry, calibration)
    done = min(len(state.load()), k)
    for j in range(max(done, 1), k + 1):
        with entry.turn(), entry.lock:
            result = find_removal(entry.model, calibration, j, name, early_barrier=EARLY_BARRIER,
                                  latter_barrier=LATTER_BARRIER, progress=False, state_path=state.path)
        if result.max_remove > getattr(entry.results.get(name), "max_remove", 0):
            entry.results[name] = result
        yield SearchStep(j, total, result if j == k else None, "computed" if k > done else "cached search",
                         f"Searching: {j} of {k} blocks chosen by {name}…")


def _refined_steps(store: ModelStore, entry: LoadedModel, method: str, k: int, calibration) -> Iterator[SearchStep]:
    """SLEB's rounds (or the criterion's one step), then the refinement for `k` blocks as one more step, in one
    turn on the model (resumable from its state file); the count's set is merged into the ones refined here."""
    name, spec = resolve_method(method)
    total = (k if get_criterion(name).resumable else 1) + 1
    searched = None
    for step in _base_steps(store, entry, name, k, calibration, total):
        searched = step.result
        if step.result is not None:
            step = replace(step, result=None, status=f"{name}'s search done; now refining the set for {k} blocks (one "
                                                     "step that holds the model)…")
        yield step
    with entry.turn(), entry.lock:
        refined = refine_removal(entry.model, calibration, searched, [k], spec, early_barrier=EARLY_BARRIER,
                                 latter_barrier=LATTER_BARRIER, progress=False)
    entry.results[method] = merged_result([entry.results.get(method), refined])
    record = refined.settings["refine"][str(k)]
    yield SearchStep(total, total, entry.results[method], "computed",
                     f"Refined: {record['seed_method']}'s set was the best seed; {len(record['swaps'])} swap(s) taken.")


def removal_steps(store: ModelStore, entry: LoadedModel, method: str, k: int,
                  spec: CalibrationSpec) -> Iterator[SearchStep]:
    """Find the removal set for `k` blocks, yielding after each step so the caller can show and cancel.

    A shipped order is used where it covers `k`, then the zoo's, then one computed earlier;
    otherwise SLEB runs round by round through `find_removal` (its state file makes every
    finished round free to reuse, and the order is nested, so a larger `k` later only adds
    rounds). A baseline is computed once up to the demo's cap. A refined method (`sleb+refine`)
    then refines the set for `k` as one more step (`sleb.prune.refine_removal`, the same as
    `sleb.prune.choose`) and keeps it per count. Each step takes a turn on the model, so other
    visitors' answers run between them.
    """
    resolve_method(method)  # an unknown method is an error before anything runs
    result, source = _order_for(store, entry, method, k)
    if result is not None:
        yield SearchStep(k, k, result, source, f"Order for {k} blocks: {source}.")
        return
    calibration = entry.calibration(spec)
    if refine_seeds(method) is not None:
        yield from _refined_steps(store, entry, method, k, calibration)
    else:
        yield from _base_steps(store, entry, method, k, calibration, k if get_criterion(method).resumable else 1)


# --- generation -----------------------------------------------------------------------------------------------------


@dataclass
class GenStats:
    """Measured on one side: tokens, time to first token, decode speed (after the first token), total time.

    `times` holds each new token's arrival, in seconds from the start of generation, so two
    sides can be compared over the same number of tokens (see `compare_speed`).
    """

    tokens: int = 0
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    total_s: float | None = None
    wait_s: float = 0.0  # waiting for the model (another user's run)
    done: bool = False
    engine: str = ""  # what measured it: torch or llamacpp
    times: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items() if k != "times"}


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


def _generate(engine: Engine, ids: list[int], settings: GenSettings, stop: threading.Event,
              events: queue.Queue) -> None:
    """The worker: holds the engine's lock, and puts each new token on the queue with its arrival time."""
    try:
        with engine.lock:
            events.put(("start", None, time.perf_counter()))
            engine.generate(ids, settings, stop, lambda new: events.put(("token", new, time.perf_counter())))
            events.put(("end", None, time.perf_counter()))
    except Exception as exc:  # handed to the caller's thread, which raises it
        events.put(("error", exc, time.perf_counter()))


def stream_generate(entry: LoadedModel, input_ids, removed: Sequence[int] = (), settings: GenSettings | None = None,
                    stop: threading.Event | None = None,
                    engine: Engine | None = None) -> Iterator[tuple[str, GenStats]]:
    """Generate with `removed` blocks gone, yielding (text so far, stats) per token, then once finished.

    Runs on `engine`, by default the model's own for that removal (`sides.side_engine`), in a
    worker thread that holds the engine's lock; the text is decoded by the model's tokenizer.
    """
    settings = settings or GenSettings()
    stop = stop or threading.Event()
    engine = engine or side_engine(entry, removed)
    ids = [int(i) for i in torch.as_tensor(input_ids).reshape(-1).tolist()]
    events: queue.Queue = queue.Queue()
    worker = threading.Thread(target=_generate, args=(engine, ids, settings, stop, events), daemon=True,
                              name="sleb-generate")
    requested = time.perf_counter()
    worker.start()
    stats, new = GenStats(engine=engine.name), []
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
                new += value
                if stats.tokens == 0:
                    first = at
                    stats.ttft_s = at - start
                last, stats.tokens = at, len(new)
                stats.times += [at - start] * len(value)
                yield entry.tokenizer.decode(new, skip_special_tokens=True), stats
            elif kind == "end":
                stats.total_s = at - start
                if stats.tokens > 1 and last > first:
                    stats.decode_tok_s = (stats.tokens - 1) / (last - first)
                stats.done = True
                yield entry.tokenizer.decode(new, skip_special_tokens=True), stats
                return
    finally:
        stop.set()  # the caller stopped reading (Stop, or an error): end the worker early


MIN_COMPARED_TOKENS = 16  # fewer decode steps than this on either side: the speed figure means little


def compare_speed(dense: GenStats, pruned: GenStats, ideal: dict | None = None) -> dict:
    """Pruned vs dense over the same number of new tokens (the shorter answer's length).

    Decode speed is the median time per token over tokens 2..n of each side (the first is the
    prefill), so a side that stopped early at EOS is not compared with a longer one; time to
    first token depends only on the prompt, the same on both sides. `enough` is False when n
    is below `MIN_COMPARED_TOKENS`. `ideal` (FLOP ratios) is carried along for the table.
    """
    n = min(len(dense.times), len(pruned.times))

    def per_token(stats: GenStats) -> float | None:
        steps = [b - a for a, b in zip(stats.times[: n - 1], stats.times[1:n], strict=True)] if n > 1 else []
        return statistics.median(steps) if steps else None

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    d, p = per_token(dense), per_token(pruned)
    return {"tokens_compared": n, "enough": n >= MIN_COMPARED_TOKENS,
            "dense_ms_per_token": round(1e3 * d, 2) if d else None,
            "pruned_ms_per_token": round(1e3 * p, 2) if p else None,
            "decode": ratio(d, p), "ttft": ratio(dense.ttft_s, pruned.ttft_s),
            "time_to_n": ratio(dense.times[n - 1], pruned.times[n - 1]) if n else None,
            "ideal": ideal or {}}


def compare_sides(stats: dict[str, GenStats], ideal: dict | None = None) -> dict[str, dict]:
    """`compare_speed` of every side but dense against dense, all over the same number of new tokens.

    That number is the shortest answer's length among all sides (dense, pruned, healed), so no
    side is timed on more tokens than another; a side not started yet (while others stream) has
    no figures and does not hold the others back. A side measured on another engine than dense
    (the healed column on torch beside llama.cpp) is marked `comparable: False`.
    """
    n = min((len(s.times) for s in stats.values() if s.times), default=0)
    dense = replace(stats["dense"], times=stats["dense"].times[:n])
    return {name: {**compare_speed(dense, replace(side, times=side.times[:n]), ideal), "engine": side.engine,
                   "comparable": side.engine == dense.engine}
            for name, side in stats.items() if name != "dense"}


def ideal_speedup(entry: LoadedModel, removed: Sequence[int], prompt_tokens: int, new_tokens: int) -> dict:
    """The FLOP ratio dense / pruned for this prompt: prefill (time to first token) and decode."""
    dense = entry.flop_counts
    gone = sum(p.numel() for i in removed for p in entry.layout.blocks[i].parameters() if p.dim() >= 2)
    pruned = {**dense, "blocks": dense["blocks"] - gone, "num_blocks": dense["num_blocks"] - len(removed)}
    steps = max(1, new_tokens - 1)
    return {"ttft": round(prefill_flops(dense, prompt_tokens) / prefill_flops(pruned, prompt_tokens), 3),
            "decode": round(decode_flops(dense, prompt_tokens, steps) / decode_flops(pruned, prompt_tokens, steps), 3)}


# --- perplexity -----------------------------------------------------------------------------------------------------


def perplexity_of(entry: LoadedModel, removed: Sequence[int], config: DemoConfig) -> dict:
    """WikiText-2 perplexity on the first few windows without `removed`, on the model's engine; cached per set."""
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
    engine = side_engine(entry, key)
    with engine.lock:
        result = engine.perplexity(windows)
    entry.ppl[key] = {**result, "data": f"wikitext2 test ({source})", "engine": engine.name}
    return entry.ppl[key]


def default_pruning(store: ModelStore) -> tuple[LoadedModel, str, int, SearchResult | None, str]:
    """The default model (loaded), its default method and block count, and the order already known for it.

    Returns `(entry, method, k, result, source)`; `result` is None when the order would need a search.
    """
    config = store.config
    entry = store.get(config.default_model)
    defaults = store.defaults_for(config.default_model)
    k = blocks_to_remove(entry.num_blocks, defaults["ratio"], None, config.max_ratio)
    result, source = _order_for(store, entry, defaults["method"], k)
    return entry, defaults["method"], k, result, source


def prepare(store: ModelStore) -> LoadedModel:
    """Before serving: load the default model and work out what its first request would otherwise pay for.

    Loads (and warms up) the model, reads its default order, and computes the perplexity of
    the dense model and of the default pruning, so a first visitor only waits for the answers.
    """
    config = store.config
    start = time.perf_counter()
    entry, method, k, result, source = default_pruning(store)
    try:
        perplexity_of(entry, [], config)
        if result is not None:
            perplexity_of(entry, result.removed(k), config)
    except SlebError as exc:  # no evaluation text here: the page shows "n/a" with the reason
        log.warning("Perplexity not prepared: %s", exc)
    log.info("Ready in %.1f s: %s, default %s %d of %d blocks (order: %s)", time.perf_counter() - start, entry.name,
             method, k, entry.num_blocks, source or "searched on the first request")
    return entry
