"""Greedy chat answers of the dense, pruned and (optionally) healed models to the demo's example prompts.

    python scripts/compare_answers.py --blocks 5,14,15,16,17,18 --healed ~/.cache/sleb/bench_heal/linear-distill
    python scripts/compare_answers.py --blocks 5,14,15,16,17,18 --healed DIR_A --healed DIR_B --prompt "Hi!"

The pruned model is the dense one with `--blocks` physically removed; `--healed` is any
healed checkpoint folder (e.g. one written by `scripts/bench_heal.py` or `sleb heal`).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sleb.loading import load_model  # noqa: E402
from sleb.removal import remove_blocks  # noqa: E402

log = logging.getLogger("compare_answers")
PROMPTS = ("What is the capital of France?", "Explain in two sentences why the sky is blue.",
           "How many legs does a spider have?", "Give me three tips for sleeping better.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--blocks", required=True, help="removed blocks (original indices), e.g. 5,14,15,16,17,18")
    p.add_argument("--healed", action="append", default=[],
                   help="a healed checkpoint folder of the same removal (repeat to compare several)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat; default: the demo's and two more)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    dense, tokenizer, _ = load_model(args.model, device="cpu", dtype="float32")
    models = {"dense": dense,
              "pruned": remove_blocks(copy.deepcopy(dense), [int(b) for b in args.blocks.split(",")])}
    for folder in args.healed:
        name = "healed" if len(args.healed) == 1 else f"healed:{folder}"
        models[name] = load_model(folder, device="cpu", dtype="float32")[0]
    for prompt in args.prompt or PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        for name, model in models.items():
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id)
            log.info("[%s] %s\n  -> %r", name, prompt,
                     tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main()
