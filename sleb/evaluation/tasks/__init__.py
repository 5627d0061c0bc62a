"""lm-eval task configs for the local copies of the zero-shot sets (`sleb_piqa`, `sleb_arc_easy`, ...).

Each `sleb_<task>.yaml` is lm-eval 0.4.13's stock `<task>` config with only the loading
replaced: prompts, choices, targets, metrics and preprocessing are the stock ones (the stock
functions are imported, not copied). `local_data` converts the local files.
"""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
