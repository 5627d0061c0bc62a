"""Baselines: valid results, and scores equal to hand computations from the model's own hidden states."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sleb.baselines import BASELINES, angular_distance, block_influence, last_blocks, oneshot_ppl, random_blocks
from sleb.blocks import find_blocks
from sleb.errors import SlebError
from sleb.removal import remove_blocks

from .conftest import tiny_llama


def block_inputs(model, windows):
    """[h_0, ..., h_N]: h_i is block i's input and h_N the last block's output (before the final norm)."""
    blocks = find_blocks(model).blocks
    last = []
    handle = blocks[-1].register_forward_hook(
        lambda _m, _a, out: last.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.inference_mode():
            hidden = model(input_ids=windows, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        handle.remove()
    assert len(hidden) == len(blocks) + 1
    # hidden_states[-1] has the final norm applied, so the last block's output comes from the hook.
    assert not torch.allclose(hidden[-1], last[0])
    return [h.float() for h in hidden[:-1]] + [last[0].float()]


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("barriers", [(1, 1), (2, 0)])
def test_every_baseline_returns_a_valid_result(llama, windows, name, barriers):
    early, latter = barriers
    total = len(find_blocks(llama).blocks)
    num_remove = 3
    result = BASELINES[name](llama, windows, num_remove, early_barrier=early, latter_barrier=latter,
                             batch_size=3, progress=False)
    assert result.method == name
    assert result.num_blocks == total
    assert result.settings["early_barrier"] == early and result.settings["latter_barrier"] == latter
    assert result.max_remove == num_remove
    assert result.order == result.removed(num_remove)
    for k in range(num_remove + 1):
        chosen = result.removed(k)
        assert len(chosen) == k == len(set(chosen))
        assert all(early <= b < total - latter for b in chosen)
    with pytest.raises(SlebError):
        result.removed(num_remove + 1)
    if name in ("block-influence", "oneshot-ppl"):
        scores = result.rounds[0]["scores"]
        assert sorted(map(int, scores)) == list(range(early, total - latter))
        assert result.order == sorted(map(int, scores), key=lambda b: (scores[str(b)], b))[:num_remove]
    # BlockSwitch restored every block's forward.
    assert all("forward" not in block.__dict__ for block in find_blocks(llama).blocks)
    assert result.to_dict()["method"] == name


def test_oneshot_ppl_scores_are_the_nll_of_physically_pruned_copies(llama, windows):
    result = oneshot_ppl(llama, windows, 3, batch_size=3, progress=False)
    expected = {}
    for block in range(1, 5):  # the blocks inside the default barriers of a 6-block model
        pruned = remove_blocks(copy.deepcopy(llama), [block])
        with torch.no_grad():
            logits = pruned(input_ids=windows).logits.float()
        expected[block] = float(F.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten(),
                                                reduction="sum"))
    scores = result.rounds[0]["scores"]
    assert set(map(int, scores)) == set(expected)
    for block, nll in expected.items():
        assert scores[str(block)] == pytest.approx(nll, rel=1e-5)
    assert result.order == sorted(expected, key=expected.get)[:3]


def test_block_influence_equals_hand_computation(llama, windows):
    hidden = block_inputs(llama, windows)
    total = len(hidden) - 1
    result = block_influence(llama, windows, total, early_barrier=0, latter_barrier=0, batch_size=3, progress=False)
    expected = {i: float((1 - F.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)).mean()) for i in range(total)}
    got = result.rounds[0]["scores"]
    for i, bi in expected.items():
        assert got[str(i)] == pytest.approx(bi, rel=1e-4, abs=1e-7)
    assert result.order == sorted(expected, key=expected.get)


@pytest.mark.parametrize("barriers", [(1, 1), (0, 0)])
def test_angular_distance_picks_the_hand_argmin(llama, windows, barriers):
    early, latter = barriers
    hidden = [h[:, -1] for h in block_inputs(llama, windows)]
    total = len(hidden) - 1
    num_remove = total - early - latter
    result = angular_distance(llama, windows, num_remove, early_barrier=early, latter_barrier=latter,
                              batch_size=3, progress=False)
    assert set(result.by_count) == set(range(1, num_remove + 1))
    assert result.order == result.by_count[num_remove]
    for n in range(1, num_remove + 1):
        dist = {
            start: float((torch.arccos(F.cosine_similarity(hidden[start], hidden[start + n], dim=-1).clamp(-1, 1))
                          / math.pi).mean())
            for start in range(early, total - latter - n + 1)
        }
        best = min(dist, key=dist.get)
        assert result.by_count[n] == list(range(best, best + n))
        assert result.removed(n) == list(range(best, best + n))
        scores = result.rounds[n - 1]["scores"]
        assert {int(s) for s in scores} == set(dist)
        for start, d in dist.items():
            assert scores[str(start)] == pytest.approx(d, rel=1e-4, abs=1e-6)


def test_last_blocks_go_up_from_the_latter_barrier(llama, windows):
    assert last_blocks(llama, windows, 3).order == [4, 3, 2]
    assert last_blocks(llama, windows, 2, early_barrier=0, latter_barrier=2).order == [3, 2]
    assert last_blocks(llama, windows, 6, early_barrier=0, latter_barrier=0).order == [5, 4, 3, 2, 1, 0]


def test_random_blocks_are_reproducible_per_seed(windows):
    model = tiny_llama(num_layers=16)
    first = random_blocks(model, windows, 6, seed=0, progress=False)
    assert random_blocks(model, windows, 6, seed=0, progress=False).order == first.order
    assert random_blocks(model, windows, 6, seed=1, progress=False).order != first.order
    full = random_blocks(model, windows, 14, seed=0, progress=False).order
    assert sorted(full) == list(range(1, 15))
    assert full[:6] == first.order


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_budget_beyond_the_barriers_is_refused(llama, windows, name):
    with pytest.raises(SlebError, match="at most 4"):
        BASELINES[name](llama, windows, 5, progress=False)
    with pytest.raises(SlebError):
        BASELINES[name](llama, windows, 0, progress=False)
