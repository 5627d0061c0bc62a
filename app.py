"""SLEB demo: a dense LLM and its block-pruned self answer side by side (Gradio).

    python app.py            # http://127.0.0.1:7860, offline on the embedded SmolLM2-135M-Instruct

Settings come from `SLEB_APP_*` environment variables (see `sleb/demo/models.py`): the
default model, the calibration budget, the parameter limit for Hub models. The same file
is the entry point of the Hugging Face Space that `space/deploy.py` builds.
"""

import logging
import os

from sleb.demo import DemoConfig, build_demo

logging.basicConfig(level=os.environ.get("SLEB_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
for noisy in ("httpx", "httpcore", "urllib3", "huggingface_hub"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

demo = build_demo(DemoConfig.from_env())  # models load lazily, on the first run that needs them

if __name__ == "__main__":
    demo.launch()
