"""The demo app: dense vs pruned side by side in Gradio (`python app.py`), also deployable as a Space.

- `models`: settings (`DemoConfig`), per-model defaults, size checks before loading, the model cache.
- `engine`: removal orders (shipped, zoo, or searched with a cost estimate), streamed generation with
  per-token timings, fair speed comparison, perplexity, `prepare` before serving; no UI.
- `sides`: which engine (`sleb.engines`: torch or llama.cpp) runs a model's sides; `SLEB_APP_ENGINE`.
- `request`: the Run handler's steps, one small function each (input, order, healed, answers, perplexity, report).
- `healed`: the healed column's checkpoint (healed folder, zoo, Hub, sleb cache), loaded once beside its
  dense model; `heal_in_background` makes one at start (`SLEB_APP_HEAL=1`).
- `online`: one quick probe of the Hub, remembered (offline mode otherwise).
- `turns`: first come, first served access to a model, with each visitor's place in line.
- `zoo`: the zoo's variants (plain and healed) and the orders they publish.
- `report`: the removal picture and the dense-vs-pruned table.
- `ui`: the Gradio page (`build_demo`).
"""

from .models import DemoConfig, ModelStore

__all__ = ["DemoConfig", "ModelStore", "build_demo"]


def build_demo(config: DemoConfig | None = None, store: ModelStore | None = None):
    """The Gradio Blocks of the demo (imports gradio only when called)."""
    from .ui import build_demo as build

    return build(config, store)
