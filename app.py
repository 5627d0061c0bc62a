"""SLEB demo: a dense LLM and its block-pruned self answer side by side (Gradio).

    python app.py            # http://127.0.0.1:7860, offline on the embedded SmolLM2-135M-Instruct

Settings come from `SLEB_APP_*` environment variables (see `sleb/demo/models.py`): the
default model, the calibration budget, the parameter limit for Hub models. Before serving,
the Hub is probed once (offline mode if it does not answer within 1.5 s) and the default
model is loaded with its shipped removal order (`SLEB_APP_PRELOAD=0` skips that). Answers and
perplexities run on llama.cpp for GGUF models where llama-cpp-python is installed, else on
transformers; `SLEB_APP_ENGINE=torch|llamacpp` chooses (docs/engines.md). With
`SLEB_APP_HEAL=1` the default pruning is then healed once in a background thread (cached), and
the healed column shows from then on. The same file is the entry point of the Hugging Face
Space that `space/deploy.py` builds.
"""

import logging
import os
from pathlib import Path

import sleb
from sleb.demo import DemoConfig, ModelStore, build_demo
from sleb.demo.engine import prepare
from sleb.demo.healed import heal_in_background
from sleb.demo.online import hub_online

logging.basicConfig(level=os.environ.get("SLEB_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
for noisy in ("httpx", "httpcore", "urllib3", "huggingface_hub"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

logging.getLogger("app").info("sleb %s from %s", sleb.__version__, Path(sleb.__file__).parent)
hub_online()  # once, quickly: offline, no request ever waits for Hub retries
config = DemoConfig.from_env()
store = ModelStore(config)
demo = build_demo(config, store)

if __name__ == "__main__":
    if config.preload:
        prepare(store)
    if config.heal_at_start:
        heal_in_background(store)
    demo.launch()
