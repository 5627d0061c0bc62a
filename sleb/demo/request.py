"""One visitor's request, step by step: the handlers that the Run button's generator is made of.

Each step is a small function of a `Request` (the state of one run) that a test can call on
its own: `start_request` checks the input and loads the model; `find_order` finds the removal
order (yielding status lines while a search runs); `attach_healed` loads the healed column's
checkpoint; `answer` streams every side's answer; `perplexities` scores each side;
`table_of` and `details_of` say what was measured. Nothing here knows about Gradio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..criteria import method_label
from ..errors import SlebError
from ..search import SearchResult
from .engine import (
    GenSettings,
    GenStats,
    blocks_to_remove,
    compare_sides,
    encode_prompt,
    ideal_speedup,
    perplexity_of,
    plan_text,
    removal_steps,
    search_plan,
    stream_generate,
)
from .healed import HealedModel, find_healed, healed_model
from .models import DemoConfig, LoadedModel, ModelStore
from .report import refine_note, refine_record, stats_table

HEALED_ENGINE_NOTE = ("*The healed column runs on torch: llama.cpp runs GGUF files, and healing changes the kept "
                      "blocks' weights, so it is not a GGUF pruned by copying; its speed is not compared with the "
                      "llama.cpp sides.*")


@dataclass
class Request:
    """What one run knows so far: the model, the removal, the answers and their timings."""

    entry: LoadedModel
    method: str
    k: int
    settings: GenSettings
    ids: object  # prompt token ids [1, n]
    result: SearchResult | None = None
    source: str = ""
    removed: list[int] = field(default_factory=list)
    ideal: dict | None = None
    healed: HealedModel | None = None
    texts: dict[str, str] = field(default_factory=lambda: {"dense": "", "pruned": "", "healed": ""})
    stats: dict[str, GenStats] = field(default_factory=lambda: {"dense": GenStats(), "pruned": GenStats()})

    @property
    def prompt_tokens(self) -> int:
        return int(self.ids.shape[1])


def start_request(config: DemoConfig, store: ModelStore, model: str, method: str, percent, blocks, prompt: str,
                  max_new_tokens, temperature, seed) -> Request:
    """The model (loaded), the block count and the prompt's ids, all checked; a `SlebError` says what to fix."""
    entry = store.get(model)
    settings = GenSettings(max_new_tokens=max(1, min(int(max_new_tokens or 1), config.max_new_tokens)),
                           temperature=float(temperature or 0), seed=int(seed or 0))
    k = blocks_to_remove(entry.num_blocks, (percent or 0) / 100, blocks, config.max_ratio)
    ids = encode_prompt(entry, prompt, config.max_prompt_tokens, settings.max_new_tokens)
    return Request(entry, method, k, settings, ids)


def find_order(config: DemoConfig, store: ModelStore, request: Request,
               progress: Callable | None = None) -> Iterator[str]:
    """Find the removal order (yielding a status line before and during a search), then the ideal speedup."""
    method, k = request.method, request.k
    plan = search_plan(store, request.entry, method, k, config.calibration)
    request.source = plan["source"]
    if plan["rounds"]:
        # Said before it starts; every round takes a turn, so other visitors' answers run in between.
        yield plan_text(plan, method, k)
        for step in removal_steps(store, request.entry, method, k, config.calibration):
            if progress is not None:
                progress((step.done, step.total), desc=f"{method}: step {step.done} of {step.total}")
            request.result, request.source = step.result, step.source
            yield f"{plan_text(plan, method, k)}\n\n{step.status}"
    elif k:
        *_, last = removal_steps(store, request.entry, method, k, config.calibration)
        request.result, request.source = last.result, last.source
    request.removed = request.result.removed(k) if k else []
    request.ideal = ideal_speedup(request.entry, request.removed, request.prompt_tokens,
                                  request.settings.max_new_tokens)


def attach_healed(store: ModelStore, request: Request) -> Iterator[str]:
    """Load the healed checkpoint of this pruning, where one exists (a status line while it loads)."""
    checkpoint = find_healed(store, request.entry, request.method, request.k, request.removed)
    if checkpoint is None:
        return
    yield f"Loading the healed model ({checkpoint.source})…"
    request.healed = healed_model(store, request.entry, checkpoint, request.k)
    if request.healed is not None:
        request.stats["healed"] = GenStats()


def answer(request: Request) -> Iterator[str]:
    """Stream every side's answer, one after the other (a status line per token)."""
    runs = [("dense", request.entry, []), ("pruned", request.entry, request.removed)]
    if request.healed is not None:  # its own model and lock; in the same turn as the others
        runs.append(("healed", request.healed.entry, []))
    for name, entry, removed in runs:
        for text, stats in stream_generate(entry, request.ids, removed, request.settings):
            request.texts[name], request.stats[name] = text, stats
            yield f"{name.capitalize()} model answering…"


def perplexities(config: DemoConfig, request: Request) -> dict[str, float | str]:
    """Each side's WikiText-2 perplexity (cached), or "n/a" with the reason."""
    runs = [("dense", request.entry, []), ("pruned", request.entry, request.removed)]
    if request.healed is not None:
        runs.append(("healed", request.healed.entry, []))
    ppl = {}
    for name, entry, removed in runs:
        try:
            ppl[name] = round(perplexity_of(entry, removed, config)["perplexity"], 3)
        except SlebError as exc:
            ppl[name] = f"n/a: {exc}"
    return ppl


def side_of(request: Request, name: str, ppl=None) -> dict:
    """One column of the table: blocks, parameters, the answer's timings (and engine), perplexity."""
    if name == "healed":
        healed = request.healed
        return {"blocks": healed.entry.num_blocks, "parameters": healed.entry.parameters(),
                **request.stats[name].as_dict(), "perplexity": ppl, **healed.checkpoint.details()}
    gone = request.removed if name == "pruned" else []
    return {"blocks": request.entry.num_blocks - len(gone), "parameters": request.entry.parameters(gone),
            **request.stats[name].as_dict(), "perplexity": ppl}


def table_of(request: Request, ppl: dict | None = None) -> str:
    """The Markdown table of every side so far, and the notes that go under it."""
    ppl = ppl or {}
    sides = {name: side_of(request, name, ppl.get(name)) for name in request.stats}
    table = stats_table(sides, compare_sides(request.stats, request.ideal))
    if request.k:
        table += (f"\n\n*Pruned: {request.k} of {request.entry.num_blocks} blocks removed by "
                  f"{method_label(request.method)}; order: {request.source}.*")
        note = refine_note(request.result, request.k)
        table += f" {note}" if note else ""
    healed = request.healed
    if healed is not None and request.stats["healed"].engine != request.stats["dense"].engine:
        table += "\n\n" + HEALED_ENGINE_NOTE
    if ppl and healed is not None and healed.checkpoint.removed and set(healed.checkpoint.removed) != set(
            request.removed):
        table += (f"\n\n*The healed checkpoint removed blocks {healed.checkpoint.removed} (its own order), the "
                  f"pruned side {request.removed}: the same count, so the same size and ideal speed.*")
    return table


def details_of(config: DemoConfig, request: Request, ppl: dict) -> dict:
    """Everything the run measured and how, as the JSON under the page."""
    entry = request.entry
    speed = compare_sides(request.stats, request.ideal)
    healed = {"healed_speedup": speed["healed"]} if request.healed is not None else {}
    refined = refine_record(request.result, request.k)
    return {
        "model": entry.name, "base_model": entry.base_id, "method": request.method,
        "method_label": method_label(request.method), "num_blocks": entry.num_blocks, "removed": request.removed,
        **({"refine": refined} if refined else {}), "order_source": request.source, "engine": entry.engine_name,
        "engine_note": entry.engine_note, **{name: side_of(request, name, ppl[name]) for name in request.stats},
        "speedup": speed["pruned"], **healed, "prompt_tokens": request.prompt_tokens,
        "chat_template": entry.is_chat, "decoding": vars(request.settings), "calibration": config.calibration_text(),
        "perplexity_data": f"WikiText-2 test, first {config.ppl_windows} windows of {config.ppl_seqlen} tokens",
    }
