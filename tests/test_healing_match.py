"""`check_match`: a dense model and its pruned copy are recognised on every layout the surgery covers.

The pruned copies are made by `remove_blocks` (in memory, and saved and reloaded with plain
transformers); the wrong pairs are a differently seeded dense model, the right model with other
blocks removed, a dense config that differs in a field the removal never touches, and a dense
model whose weight differs in one value.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from sleb.blocks import find_blocks
from sleb.errors import SlebError
from sleb.healing import check_match
from sleb.removal import remove_blocks, save_checkpoint
from tests.test_surgery import CASES

pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CASES[name][0]()).eval()


@pytest.mark.parametrize("name", CASES)
def test_a_pruned_copy_matches_its_dense_model(name, tmp_path):
    dense = build(name)
    removed = CASES[name][1]
    pruned = remove_blocks(copy.deepcopy(dense), removed)
    check_match(dense, pruned, removed)
    reloaded = AutoModelForCausalLM.from_pretrained(save_checkpoint(pruned, None, tmp_path / "p")).eval()
    check_match(dense, reloaded, removed)


@pytest.mark.parametrize("name", ["qwen2_moe-mlp_only_layers", "gpt_neo", "bloom",
                                  "gpt2-scale_attn_by_inverse_layer_idx", "gemma3-conditional-generation"])
def test_wrong_dense_models_are_refused(name):
    dense = build(name)
    removed = CASES[name][1]
    pruned = remove_blocks(copy.deepcopy(dense), removed)
    with pytest.raises(SlebError, match="weights differ|differ from the pruned"):
        check_match(build(name, seed=1), pruned, removed)  # same config, other weights
    total = dense.config.get_text_config().num_hidden_layers
    other = [i for i in range(total) if i not in removed][: len(removed)]
    with pytest.raises(SlebError):  # right model, other blocks
        check_match(dense, pruned, other)
    changed = copy.deepcopy(dense)
    changed.config.get_text_config().initializer_range = 0.5  # a field no removal touches
    with pytest.raises(SlebError, match="config"):
        check_match(changed, pruned, removed)
    nudged = copy.deepcopy(dense)
    kept = next(i for i in range(total) if i not in removed)
    with torch.no_grad():  # one value of a kept block
        next(find_blocks(nudged).blocks[kept].parameters()).view(-1)[3] += 1e-3
    with pytest.raises(SlebError, match="weights differ|differ from the pruned"):
        check_match(nudged, pruned, removed)
