"""The Gradio page: pick a model, a method and how much to prune, and compare dense and pruned side by side.

`build_demo(config)` returns the Blocks; the handlers are thin: they call `engine` and turn
`SlebError` (and anything unexpected) into a `gr.Error` that says what to do, so one
user's mistake never stops the app for the others.
"""

from __future__ import annotations

import logging

import gradio as gr

from ..errors import SlebError
from ..prune import METHODS
from .engine import (
    EARLY_BARRIER,
    LATTER_BARRIER,
    GenSettings,
    GenStats,
    blocks_to_remove,
    encode_prompt,
    perplexity_of,
    removal_steps,
    speedup,
    stream_generate,
)
from .models import DemoConfig, ModelStore
from .report import removal_figure, stats_table

log = logging.getLogger(__name__)

METHOD_LABELS = {
    "sleb": "SLEB (greedy, rescored every round)",
    "block-influence": "block influence (ShortGPT)",
    "angular": "angular distance (Gromov et al.)",
    "oneshot-ppl": "one-shot perplexity (Shortened LLaMA)",
    "last": "last blocks",
    "random": "random blocks",
}
EXAMPLES = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning to program.",
]
TRACK_TQDM = gr.Progress(track_tqdm=True)  # shows find_removal's progress bars in the page
INTRO = """# SLEB: dense vs pruned, side by side
Remove whole transformer blocks with [SLEB](https://arxiv.org/abs/2402.09025) (or a baseline) and compare the
pruned model with the dense one on the same prompt and decoding settings. The pruned model shares the dense
model's weights: its removed blocks are bypassed, nothing is copied."""


def _user_error(exc: Exception) -> gr.Error:
    if isinstance(exc, SlebError):
        return gr.Error(str(exc))
    log.exception("Unexpected error in the demo")
    return gr.Error(f"Something went wrong ({type(exc).__name__}: {exc}). Try another model or setting.")


def _side(blocks: int, parameters: int | None, stats: GenStats, ppl=None) -> dict:
    return {"blocks": blocks, "parameters": parameters, **stats.as_dict(), "perplexity": ppl}


def make_run(config: DemoConfig, store: ModelStore):
    """The Run handler: a generator streaming (status, dense, pruned, table, figure, details)."""

    def run(model, method, percent, blocks, prompt, max_new_tokens, temperature, seed,
            progress=TRACK_TQDM):
        dense = pruned = ""
        dense_stats, pruned_stats = GenStats(), GenStats()
        removed = []

        try:
            yield "Loading the model…", "", "", "", gr.skip(), gr.skip()
            entry = store.get(model)
            params = [entry.parameters(), None]  # dense, pruned (once the removed blocks are known)

            def table(dense_stats: GenStats, pruned_stats: GenStats) -> str:
                return stats_table(_side(entry.num_blocks, params[0], dense_stats),
                                   _side(entry.num_blocks - len(removed), params[1], pruned_stats),
                                   speedup(dense_stats, pruned_stats))

            settings = GenSettings(max_new_tokens=max(1, min(int(max_new_tokens or 1), config.max_new_tokens)),
                                   temperature=float(temperature or 0), seed=int(seed or 0))
            k = blocks_to_remove(entry.num_blocks, (percent or 0) / 100, blocks, config.max_ratio)
            ids = encode_prompt(entry, prompt, config.max_prompt_tokens, settings.max_new_tokens)
            for dense, dense_stats in stream_generate(entry, ids, (), settings):
                yield "Dense model answering…", dense, pruned, table(dense_stats, pruned_stats), gr.skip(), gr.skip()
            result, source = None, "none"
            if k:
                for step in removal_steps(store, entry, method, k, config.calibration):
                    progress((step.done, step.total), desc=f"{method}: {step.done} of {step.total} blocks chosen")
                    result, source = step.result, step.source
                    yield (f"Choosing blocks to remove ({method}): {step.done} of {step.total}…", dense, pruned,
                           table(dense_stats, pruned_stats), gr.skip(), gr.skip())
                removed = result.removed(k)
            params[1] = entry.parameters(removed)
            yield "Pruned model answering…", dense, pruned, table(dense_stats, pruned_stats), gr.skip(), gr.skip()
            for pruned, pruned_stats in stream_generate(entry, ids, removed, settings):
                yield "Pruned model answering…", dense, pruned, table(dense_stats, pruned_stats), gr.skip(), gr.skip()
            # Drawn only now: rendering the picture while the pruned side runs would slow its measured speed.
            figure = removal_figure(result, k, entry.num_blocks, (EARLY_BARRIER, LATTER_BARRIER),
                                    f"{entry.name}: {k} of {entry.num_blocks} blocks removed by {method} ({source})")
            ppl = {}
            for name, skip in (("dense", []), ("pruned", removed)):
                try:
                    ppl[name] = round(perplexity_of(entry, skip, config)["perplexity"], 3)
                except SlebError as exc:
                    ppl[name] = f"n/a: {exc}"
            sides = {"dense": _side(entry.num_blocks, params[0], dense_stats, ppl["dense"]),
                     "pruned": _side(entry.num_blocks - len(removed), params[1], pruned_stats, ppl["pruned"])}
            details = {
                "model": entry.name, "base_model": entry.base_id, "method": method, "num_blocks": entry.num_blocks,
                "removed": removed, "order_source": source, **sides, "speedup": speedup(dense_stats, pruned_stats),
                "prompt_tokens": int(ids.shape[1]), "chat_template": entry.is_chat,
                "decoding": vars(settings), "calibration": config.calibration_text(),
                "perplexity_data": f"WikiText-2 test, first {config.ppl_windows} windows of {config.ppl_seqlen} tokens",
            }
            yield ("Done.", dense, pruned, stats_table(sides["dense"], sides["pruned"], details["speedup"]),
                   figure, details)
        except Exception as exc:
            raise _user_error(exc) from exc

    return run


def build_demo(config: DemoConfig | None = None, store: ModelStore | None = None) -> gr.Blocks:
    """The whole page, wired to a model store; queue it and launch it."""
    config = config or DemoConfig.from_env()
    store = store or ModelStore(config)
    with gr.Blocks(title="SLEB: dense vs pruned") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model = gr.Dropdown(store.choices(), value=config.default_model, allow_custom_value=True,
                                    label="Model", info="pick one, or type a Hub id (owner/name) or a local folder",
                                    elem_id="model")
                method = gr.Dropdown([(METHOD_LABELS[m], m) for m in METHODS], value="sleb", label="Method",
                                     elem_id="method")
                percent = gr.Slider(0, round(100 * config.max_ratio), value=20, step=5, label="Blocks to remove (%)",
                                    elem_id="percent")
                blocks = gr.Number(0, precision=0, minimum=0, label="…or a block count (0: use the %)",
                                   elem_id="blocks")
                with gr.Accordion("Decoding", open=False):
                    max_new = gr.Slider(1, config.max_new_tokens, value=64, step=1, label="New tokens",
                                        elem_id="max-new")
                    temperature = gr.Slider(0, 1.5, value=0, step=0.05, label="Temperature (0: greedy)")
                    seed = gr.Number(0, precision=0, label="Seed (when sampling)")
                gr.Markdown(
                    f"Removal orders come from the zoo where it has one, else they are computed here on "
                    f"{config.calibration_text()}: a small CPU budget (the paper uses 128 x 2048 tokens). A search "
                    f"runs once per model and method and is cached; a larger ratio later only adds rounds. "
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
                table = gr.Markdown(elem_id="stats")
        plot = gr.Plot(label="What was removed", format="png", elem_id="removal-plot")
        with gr.Accordion("Details (JSON)", open=False):
            details = gr.JSON(elem_id="details")

        inputs = [model, method, percent, blocks, prompt, max_new, temperature, seed]
        outputs = [status, dense, pruned, table, plot, details]
        run = make_run(config, store)
        runs = [run_button.click(run, inputs, outputs, api_name="run"),
                prompt.submit(run, inputs, outputs, api_visibility="private")]
        stop_button.click(None, cancels=runs)
        model.change(lambda value: _zoo_preset(store, value), model, [method, percent, blocks],
                     api_visibility="private")
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    return demo


def _zoo_preset(store: ModelStore, value: str):
    """Picking a zoo variant sets its method and ratio."""
    variant = store.zoo_variant(value or "")
    if variant is None:
        return gr.skip(), gr.skip(), gr.skip()
    return variant.method, round(100 * variant.ratio), 0
