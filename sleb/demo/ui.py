"""The Gradio page: pick a model, a method and how much to prune, and compare dense and pruned side by side.

`build_demo(config)` returns the Blocks; the handlers are thin: the Run handler strings together
the steps of `request` (each callable alone) and turns
`SlebError` (and anything unexpected) into a `gr.Error` that says what to do, so one
user's mistake never stops the app for the others. Visitors take turns on a model, first
come first served, and see their place in the line while they wait.

The healed column: where a healed checkpoint of the current pruning exists (`healed`), the
third answer box (`#healed`, hidden otherwise) shows its answer, and the table and details
its speed and perplexity beside dense and pruned. It runs on torch even where dense and pruned run
on llama.cpp (see `request.HEALED_ENGINE_NOTE`), and its speed is then not compared.
"""

from __future__ import annotations

import logging

import gradio as gr

from ..criteria import PICK_METHODS, method_label
from ..errors import SlebError
from .engine import EARLY_BARRIER, LATTER_BARRIER, blocks_to_remove, plan_text, search_plan
from .models import DemoConfig, ModelStore
from .report import removal_figure
from .request import Request, answer, attach_healed, details_of, find_order, perplexities, start_request, table_of

log = logging.getLogger(__name__)

METHOD_LABELS = {name: method_label(name) for name in PICK_METHODS}
EXAMPLES = [
    "Explain in two sentences why the sky is blue.",
    "Which city is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Give me three tips for learning to program.",
]
TRACK_TQDM = gr.Progress(track_tqdm=True)  # shows find_removal's progress bars in the page
INTRO = """# SLEB: dense vs pruned, side by side
Remove whole transformer blocks with [SLEB](https://arxiv.org/abs/2402.09025) (or a baseline) and compare the
pruned model with the dense one on the same prompt and decoding settings, both on the same engine: on
llama.cpp (GGUF models, the default on a CPU) the pruned model is the GGUF without its removed blocks, written
once; on transformers it shares the dense model's weights and its removed blocks are bypassed."""


def _user_error(exc: Exception) -> gr.Error:
    if isinstance(exc, SlebError):
        return gr.Error(str(exc))
    log.exception("Unexpected error in the demo")
    return gr.Error(f"Something went wrong ({type(exc).__name__}: {exc}). Try another model or setting.")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class _Page:
    """The outputs of one run: (status, dense, pruned, healed, table, figure, details).

    The healed box is shown where a healed checkpoint of this pruning exists, hidden otherwise:
    an update says so when that changes (on the first yield, and when the checkpoint is loaded),
    every other yield is plain text, so an API client's final answer is a string like the others.
    """

    def __init__(self):
        self.request: Request | None = None
        self.shown: list[bool] = []  # the box's visibility as last sent

    def healed_box(self):
        request = self.request
        text, visible = (request.texts["healed"], request.healed is not None) if request else ("", False)
        if self.shown[-1:] == [visible]:
            return text
        self.shown.append(visible)
        return gr.update(value=text, visible=visible)

    def out(self, status: str, table: str = "", figure=None, details=None):
        texts = self.request.texts if self.request else {"dense": "", "pruned": ""}
        return (status, texts["dense"], texts["pruned"], self.healed_box(), table,
                gr.skip() if figure is None else figure, gr.skip() if details is None else details)


def _wait_turn(page: _Page, ticket: int, what: str):
    for place, length in page.request.entry.turns.waiting(ticket):
        yield page.out(f"Waiting for the model ({what}): you are {_ordinal(place - 1)} in line behind the "
                       f"running request ({length} in all)…")


def make_run(config: DemoConfig, store: ModelStore):
    """The Run handler: a generator streaming (status, dense, pruned, healed, table, figure, details).

    It strings together the steps of `request` (each a function a test can call alone) and
    turns any error into a `gr.Error` that says what to do.
    """

    def run(model, method, percent, blocks, prompt, max_new_tokens, temperature, seed, progress=TRACK_TQDM):
        page, tickets = _Page(), []
        try:
            yield page.out("Loading the model…")
            page.request = request = start_request(config, store, model, method, percent, blocks, prompt,
                                                   max_new_tokens, temperature, seed)
            for status in find_order(config, store, request, progress):
                yield page.out(status)
            for status in attach_healed(store, request):
                yield page.out(status)
            # One turn for all answers: the visitor's answers (dense, pruned, healed) are timed back to back.
            tickets.append(request.entry.turns.take())
            yield from _wait_turn(page, tickets[-1], "answers")
            for status in answer(request):
                yield page.out(status, table_of(request))
            ppl = perplexities(config, request)
            request.entry.turns.give_back(tickets.pop())
            # Drawn after the turn: rendering the picture must not hold up the next visitor.
            entry, k = request.entry, request.k
            figure = removal_figure(request.result, k, entry.num_blocks, (EARLY_BARRIER, LATTER_BARRIER),
                                    f"{entry.name}: {k} of {entry.num_blocks} blocks removed by {method} "
                                    f"({request.source})")
            yield page.out("Done.", table_of(request, ppl), figure, details_of(config, request, ppl))
        except Exception as exc:
            raise _user_error(exc) from exc
        finally:  # also when cancelled (Stop): Gradio closes the generator, and the next visitor goes on
            for ticket in tickets:
                page.request.entry.turns.give_back(ticket)

    return run


def make_plan(config: DemoConfig, store: ModelStore):
    """The note under the settings: why this default, and what the chosen order costs (a search or nothing)."""

    def plan(model, method, percent, blocks):
        defaults = store.defaults_for(model)
        lines = [f"**Default for this model:** {defaults['why']}"]
        entry = store.loaded(model)
        if entry is None:
            lines.append("The cost of the removal order is shown once the model is loaded (on the first run).")
            return "\n\n".join(lines)
        try:
            k = blocks_to_remove(entry.num_blocks, (percent or 0) / 100, blocks, config.max_ratio)
            lines.append(plan_text(search_plan(store, entry, method, k, config.calibration), method, k))
        except SlebError as exc:
            lines.append(str(exc))
        return "\n\n".join(lines)

    return plan


def build_demo(config: DemoConfig | None = None, store: ModelStore | None = None) -> gr.Blocks:
    """The whole page, wired to a model store; queue it and launch it."""
    config = config or DemoConfig.from_env()
    store = store or ModelStore(config)
    start = store.defaults_for(config.default_model)
    plan = make_plan(config, store)
    with gr.Blocks(title="SLEB: dense vs pruned") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model = gr.Dropdown(store.choices(), value=config.default_model, allow_custom_value=True,
                                    label="Model", info="pick one, or type a Hub id (owner/name) or a local folder",
                                    elem_id="model")
                method = gr.Dropdown([(METHOD_LABELS[m], m) for m in PICK_METHODS], value=start["method"],
                                     label="Method", elem_id="method")
                percent = gr.Slider(0, round(100 * config.max_ratio), value=round(100 * start["ratio"]), step=5,
                                    label="Blocks to remove (%)", elem_id="percent")
                blocks = gr.Number(0, precision=0, minimum=0, label="…or a block count (0: use the %)",
                                   elem_id="blocks")
                plan_note = gr.Markdown(plan(config.default_model, start["method"], round(100 * start["ratio"]), 0),
                                        elem_id="plan")
                with gr.Accordion("Decoding", open=False):
                    max_new = gr.Slider(1, config.max_new_tokens, value=64, step=1, label="New tokens",
                                        elem_id="max-new")
                    temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0: greedy)")
                    seed = gr.Number(0, precision=0, label="Seed (when sampling)")
                gr.Markdown(
                    f"Removal orders ship with sleb for the default model (searches longer than a visit could "
                    f"wait for, the refined pick's sets for 1-9 blocks among them; see `sleb/orders/`), or come "
                    f"from the zoo; otherwise they are computed here on {config.calibration_text()}: a small CPU "
                    f"budget (the paper uses 128 x 2048 tokens), once per model and method, cached. SLEB's order is "
                    f"nested, so a larger ratio later only adds rounds; the refined pick refines each block count "
                    f"on its own, after SLEB's rounds. "
                    f"Prompts up to {config.max_prompt_tokens} tokens; the chat template is applied for chat models.",
                    elem_id="calibration-note")
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…", elem_id="prompt")
                gr.Examples(EXAMPLES, inputs=prompt)
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run")
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    dense = gr.Textbox(label="Dense", lines=8, interactive=False, elem_id="dense")
                    pruned = gr.Textbox(label="Pruned", lines=8, interactive=False, elem_id="pruned")
                    healed = gr.Textbox(label="Pruned and healed", lines=8, interactive=False, visible=False,
                                        elem_id="healed")
                table = gr.Markdown(elem_id="stats")
        plot = gr.Plot(label="What was removed", format="png", elem_id="removal-plot")
        with gr.Accordion("Details (JSON)", open=False):
            details = gr.JSON(elem_id="details")

        inputs = [model, method, percent, blocks, prompt, max_new, temperature, seed]
        outputs = [status, dense, pruned, healed, table, plot, details]
        run = make_run(config, store)
        runs = [run_button.click(run, inputs, outputs, api_name="run"),
                prompt.submit(run, inputs, outputs, api_visibility="private")]
        stop_button.click(None, cancels=runs)
        preset = model.change(lambda value: _preset(store, value), model, [method, percent, blocks],
                              api_visibility="private")
        preset.then(plan, [model, method, percent, blocks], plan_note, api_visibility="private")
        for control in (method, percent, blocks):
            control.change(plan, [model, method, percent, blocks], plan_note, api_visibility="private")
        for event in runs:
            event.then(plan, [model, method, percent, blocks], plan_note, api_visibility="private")
        demo.load(plan, [model, method, percent, blocks], plan_note, api_visibility="private")  # as of now
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    return demo


def _preset(store: ModelStore, value: str):
    """Picking a model sets its default method and ratio (a zoo variant: its own)."""
    defaults = store.defaults_for(value or "")
    return defaults["method"], round(100 * defaults["ratio"]), 0
