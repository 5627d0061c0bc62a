"""Compare distillation recipes on a small token budget: held-out KL and NLL after each, and tokens/s.

    python scripts/heal_sweep.py --threads 1 --tokens 8192 lora:1e-3:1 full:1e-4:1 full:3e-4:1
    python scripts/heal_sweep.py --threads 1 --tokens 8192 lora:3e-3:1 full:1e-3:1

Each recipe is `kind:lr:windows_per_step`, kind `lora` (rank 16, every Linear in the blocks) or
`full` (every kept block trained in full). Every recipe starts from the same pruned copy of the
dense model (no linear fold) and is scored on the healing data's held-out windows against the
dense model, as `sleb heal` scores its runs. One line per recipe, then a JSON list.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sleb.blocks import num_layers  # noqa: E402
from sleb.healing import DistillSpec, distill, heal_data  # noqa: E402
from sleb.healing.distill import heldout_scores, teacher_logprobs  # noqa: E402
from sleb.loading import load_model  # noqa: E402
from sleb.removal import remove_blocks  # noqa: E402

log = logging.getLogger("heal_sweep")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="+", help="kind:lr:windows_per_step, e.g. lora:2e-3:1")
    p.add_argument("--model", default="default")
    p.add_argument("--blocks", default="17,18,16,5,14,15", help="removed blocks (original indices)")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    dense, tokenizer, _ = load_model(args.model, device="cpu", dtype="float32")
    removed = [int(b) for b in args.blocks.split(",")]
    data = heal_data(tokenizer, "c4", args.seqlen, 4)
    reference, dense_nll = teacher_logprobs(dense, data.heldout, "bf16")
    before = heldout_scores(remove_blocks(copy.deepcopy(dense), removed), dense, data.heldout, "bf16", reference)
    log.info("held-out before: NLL %.4f, KL %.4f (dense NLL %.4f)", before["nll"], before["kl"], dense_nll)
    rows = []
    for recipe in args.recipes:
        kind, lr, per_step = recipe.split(":")
        student = remove_blocks(copy.deepcopy(dense), removed)
        spec = DistillSpec(tokens=args.tokens, batch_windows=int(per_step), lr=float(lr), save_every=10**9,
                           train_blocks=list(range(num_layers(student))) if kind == "full" else [])
        start = time.perf_counter()
        healed, _ = distill(student, dense, data.train, spec, progress=False)
        seconds = time.perf_counter() - start
        after = heldout_scores(healed, dense, data.heldout, "bf16", reference)
        rows.append({"recipe": recipe, "tokens": args.tokens, "seconds": round(seconds, 1),
                     "tokens_per_s": round(args.tokens / seconds, 1), "before": before, "after": after})
        log.info("%s: held-out NLL %.4f, KL %.4f; %.0f s (%.0f tokens/s)", recipe, after["nll"], after["kl"],
                 seconds, args.tokens / seconds)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
