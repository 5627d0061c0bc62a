"""Healing and where the weights are: offloaded models are refused up front; a model split over devices heals.

An offloaded model (accelerate's CPU offload: weights on `meta`, a hook loads them at each
call) is refused with a `SlebError` before any data is read: the spec names a data file that
does not exist, so any work before the refusal would fail on that file instead. The split
model (GPU only) must fold exactly what the same model folds on one device.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import cpu_offload, dispatch_model

from sleb.errors import SlebError
from sleb.healing import HealSpec, fit_linear, heal_model, residual_writer
from sleb.loading import cache_dir
from sleb.removal import remove_blocks
from tests.conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

REMOVED = [2, 3]


@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_an_offloaded_model_is_refused_before_any_work(which, tmp_path):
    dense = tiny_llama(6)
    pruned = remove_blocks(copy.deepcopy(dense), REMOVED)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    cpu_offload(dense if which == "dense" else pruned, execution_device="cpu")
    spec = HealSpec(methods=("linear", "distill"), source=str(tmp_path / "missing.txt"), seqlen=16)
    name = "the dense model" if which == "dense" else "the pruned model"
    with pytest.raises(SlebError, match=f"modules of {name} are offloaded.*--device cpu"):
        heal_model(dense, pruned, None, REMOVED, spec, progress=False)
    assert not list(cache_dir().rglob("distill-*.pt"))
    if which == "dense":
        assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())


def split(model, first_gpu_block: int):
    """`model` over the CPU (embeddings, first blocks) and GPU 0 (the rest), with accelerate's hooks."""
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": 0, "lm_head": 0}
    for i in range(len(model.model.layers)):
        device_map[f"model.layers.{i}"] = "cpu" if i < first_gpu_block else 0
    return dispatch_model(model, device_map=device_map, main_device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for a second device")
def test_a_model_split_at_the_folded_block_heals_as_on_one_device():
    dense = tiny_llama(6)
    pruned = remove_blocks(copy.deepcopy(dense), REMOVED)
    x = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(1))
    alone = copy.deepcopy(pruned)
    fit_linear(dense, alone, REMOVED, x, progress=False)
    moved = split(copy.deepcopy(pruned), first_gpu_block=1)  # block 1 (the fold) computes on the GPU
    assert moved.model.layers[1].mlp.down_proj.weight.device.type == "cuda"
    assert residual_writer(moved, 1, x) is moved.model.layers[1].mlp.down_proj
    fit_linear(split(copy.deepcopy(dense), first_gpu_block=2), moved, REMOVED, x, progress=False)
    torch.testing.assert_close(moved.model.layers[1].mlp.down_proj.weight.cpu(),
                               alone.model.layers[1].mlp.down_proj.weight, rtol=1e-3, atol=1e-4)
