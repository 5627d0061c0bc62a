"""Verification of a bf16 checkpoint on the real model: measured rounding, a correct save, damaged saves.

    OMP_NUM_THREADS=1 python scripts/bench_verify.py              # SmolLM2 (embedded), SLEB 20% blocks
    python scripts/bench_verify.py --model PATH --blocks 3,7 --dtype float16
    python scripts/bench_verify.py --load-dtype bfloat16          # a bf16 model saved in bf16

Loads the model in float32 (or `--load-dtype`), takes the `Verifier` (dense with the blocks
bypassed), removes the blocks and saves in the half dtype: prints the measured rounding, the
correct save's max |logit difference| and the tolerance, then the same for saves whose `o_proj`
(the attention's output projection) in one kept block was scaled by 1.3, each refused or
accepted. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sleb.blocks import find_blocks  # noqa: E402
from sleb.errors import SlebError  # noqa: E402
from sleb.files import read_record
from sleb.loading import load_model  # noqa: E402
from sleb.removal import remove_blocks, save_checkpoint  # noqa: E402
from sleb.verify import Verifier  # noqa: E402

log = logging.getLogger("bench_verify")


def attention_output(block):
    """The attention's output projection: the last 2-D weight inside the block's attention module."""
    attn = next(m for n, m in block.named_children() if "att" in n)
    return [m for m in attn.modules() if getattr(m, "weight", None) is not None and m.weight.dim() == 2][-1]


def save(model, tokenizer, folder: Path, dtype, verifier) -> dict:
    try:
        out = save_checkpoint(model, tokenizer, folder, {"format": "sleb/1"}, dtype=dtype, verifier=verifier)
    except SlebError as exc:
        return {"verdict": "refused", "message": str(exc)[:160]}
    return {"verdict": "accepted", **read_record(out)["verification"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--blocks", default="5,13,14,16,17,18", help="removed blocks (SmolLM2's SLEB 20%% pick)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--load-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--damage", default="0,3,10", help="kept blocks whose o_proj is scaled by 1.3, one at a time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dtype = getattr(torch, args.dtype)
    model, tokenizer, _ = load_model(args.model, device="cpu", dtype=args.load_dtype)
    removed = [int(b) for b in args.blocks.split(",")]
    verifier = Verifier(model, removed)
    pruned = remove_blocks(model, removed)
    result = {"model": args.model, "removed": removed, "load_dtype": args.load_dtype, "dtype": args.dtype,
              "max_abs_logit": float(verifier.expected.abs().max()), "measured_rounding": verifier.rounding[dtype]}
    with tempfile.TemporaryDirectory() as tmp:
        result["correct"] = save(copy.deepcopy(pruned), tokenizer, Path(tmp) / "ok", dtype, verifier)
        for b in [int(b) for b in args.damage.split(",")]:
            bad = copy.deepcopy(pruned)
            with torch.no_grad():
                attention_output(find_blocks(bad).blocks[b]).weight.mul_(1.3)
            with torch.no_grad():
                got = bad(input_ids=verifier.ids, use_cache=False).logits.float()
            result[f"o_proj_x1.3_block{b}"] = {"fp32_max_abs_logit_diff": float((got - verifier.expected).abs().max()),
                                               **save(bad, tokenizer, Path(tmp) / f"bad{b}", dtype, verifier)}
    for key, value in result.items():
        log.info("%s: %s", key, value)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
