"""The demo app: dense vs pruned side by side in Gradio (`python app.py`), also deployable as a Space.

- `models`: settings (`DemoConfig`), the zoo manifest, size checks before loading, the model cache.
- `engine`: removal orders, streamed generation with timings, perplexity; no UI.
- `report`: the removal picture and the dense-vs-pruned table.
- `ui`: the Gradio page (`build_demo`).
"""

from .models import DemoConfig, ModelStore

__all__ = ["DemoConfig", "ModelStore", "build_demo"]


def build_demo(config: DemoConfig | None = None, store: ModelStore | None = None):
    """The Gradio Blocks of the demo (imports gradio only when called)."""
    from .ui import build_demo as build

    return build(config, store)
