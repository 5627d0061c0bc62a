"""Verification of half-precision checkpoints: the tolerance is the model's own measured rounding.

Tiny random models of every family the surgery tests cover: a correct bf16/fp16 save passes, under a
tolerance far below the former constant. A checkpoint whose attention output projection was scaled
by 1.3 (refused in fp32, so the damage is real) is refused in bf16 too, and no folder is left behind.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sleb.blocks import find_blocks
from sleb.errors import SlebError
from sleb.removal import remove_blocks, save_checkpoint
from sleb.verify import Verifier, bypassed_logits
from tests import test_architectures as arch
from tests import test_surgery as surgery

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {name: (factory, arch.REMOVED) for name, factory in arch.FAMILIES.items()}
CASES.update({name: surgery.CASES[name] for name in ("gpt_neo", "bloom", "falcon", "qwen2_moe-mlp_only_layers")})
OLD_BF16 = 5e-2  # the former constant tolerance, relative to max(1, |logit|)


def build(name):
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(CASES[name][0]()).eval()


def damage(model):
    """Scale the attention output projection of the first block by 1.3."""
    block = find_blocks(model).blocks[0]
    proj = block.self_attn.o_proj if hasattr(block, "self_attn") else block.attn.c_proj
    with torch.no_grad():
        proj.weight.mul_(1.3)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_correct_half_checkpoint_passes_under_its_measured_rounding(name, dtype, tmp_path):
    dense = build(name)
    removed = CASES[name][1]
    verifier = Verifier(dense, removed)
    folder = save_checkpoint(remove_blocks(dense, removed), None, tmp_path / "ok", {"format": "sleb/1"}, dtype=dtype,
                             verifier=verifier)
    check = json.loads((folder / "sleb.json").read_text())["verification"]
    scale = max(1.0, float(verifier.expected.abs().max()))
    assert check["reload"] == "passed" and 0 < check["tolerance"] < OLD_BF16 * scale / 5


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_damaged_bf16_checkpoint_is_refused(name, tmp_path):
    dense = build(name)
    verifier = Verifier(dense, [1, 2])
    bad = remove_blocks(dense, [1, 2])
    damage(bad)
    with pytest.raises(SlebError, match="does not reproduce"):
        save_checkpoint(copy.deepcopy(bad), None, tmp_path / "bad32", {"format": "sleb/1"}, verifier=verifier)
    with pytest.raises(SlebError, match="does not reproduce"):
        save_checkpoint(bad, None, tmp_path / "bad", {"format": "sleb/1"}, dtype=torch.bfloat16, verifier=verifier)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))


@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt2", "opt", "bloom", "qwen2_moe-mlp_only_layers"])
def test_a_bf16_model_saved_in_bf16_is_checked_against_its_own_rounding(name, tmp_path):
    dense = build(name).to(torch.bfloat16)
    weights = {n: p.clone() for n, p in dense.named_parameters()}
    verifier = Verifier(dense, [1, 2])
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, weights[n]) for n, p in dense.named_parameters())
    # Independently: a float32 copy of the same bf16 weights, same tokens, same blocks bypassed.
    fp32 = bypassed_logits(copy.deepcopy(dense).float(), [1, 2], verifier.ids)
    assert verifier.rounding[torch.bfloat16] == pytest.approx(float((fp32 - verifier.expected).abs().max()), rel=1e-3)
    pruned = remove_blocks(dense, [1, 2])
    bad = copy.deepcopy(pruned)
    save_checkpoint(pruned, None, tmp_path / "ok", {"format": "sleb/1"}, verifier=verifier)
    if name in ("llama", "gpt2"):
        damage(bad)
        with pytest.raises(SlebError, match="does not reproduce"):
            save_checkpoint(bad, None, tmp_path / "bad", {"format": "sleb/1"}, verifier=verifier)
