"""Healing a checkpoint saved in bfloat16 against its float32 dense model.

The pruned weights are the dense ones rounded to bfloat16; `heal` must accept that pair
(and only that pair: a dense model whose kept weights differ by more than the rounding, or
another model, is refused). The healed checkpoint is compared with the bf16 checkpoint it
started from: only the folded projection of the block before the cut may change.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from sleb.errors import SlebError
from sleb.healing import HealSpec, heal
from sleb.loading import load_model
from sleb.removal import remove_blocks, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = HealSpec(methods=("linear",), seqlen=32, heldout=2, linear_tokens=64)


@pytest.fixture
def bf16_pruned(tiny_model_dir, tmp_path):
    model, tok, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    remove_blocks(model, [2, 3])
    record = {"format": "sleb/1", "model_argument": str(tiny_model_dir), "base_model": str(tiny_model_dir),
              "removal_order": [2, 3], "removed": [2, 3]}
    return save_checkpoint(model, tok, tmp_path / "pruned-bf16", record, dtype=torch.bfloat16)


def test_a_bf16_checkpoint_heals_against_its_fp32_dense_model(bf16_pruned, tmp_path):
    assert json.loads((bf16_pruned / "sleb.json").read_text())["dtype"] == "bfloat16"
    out = heal(bf16_pruned, tmp_path / "healed", SPEC, device="cpu", progress=False)
    record = json.loads((out / "sleb.json").read_text())
    assert record["dtype"] == "bfloat16" and record["healing"]["linear"]["cuts"][0]["module"] == "mlp.down_proj"
    healed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    plain = AutoModelForCausalLM.from_pretrained(bf16_pruned, dtype=torch.float32).state_dict()
    changed = sorted(k for k in plain if not torch.equal(plain[k], healed[k]))
    assert changed == ["model.layers.1.mlp.down_proj.weight"]


def test_a_bf16_checkpoint_is_refused_against_another_dense_model(bf16_pruned, tiny_model_dir, tmp_path):
    dense, tok, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    with torch.no_grad():  # a kept weight moved by far more than bf16 rounding (relative 2^-8)
        dense.model.layers[4].self_attn.o_proj.weight.mul_(1.05)
    save_checkpoint(dense, tok, tmp_path / "other")
    with pytest.raises(SlebError, match="Refusing.*Block 2 of the pruned model is not block 4"):
        heal(bf16_pruned, tmp_path / "out", SPEC, dense=str(tmp_path / "other"), device="cpu", progress=False)
    assert not (tmp_path / "out").exists()
