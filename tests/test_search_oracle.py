"""Every round of both searches against an independent oracle, and every saved variant against the dense model.

The oracle for a round-k score of candidate c is the total NLL, from the model's own
logits (`full_nll`), of a deep copy with `order[:k-1] + [c]` physically removed by
`remove_blocks`: it shares no code with the searches' bypass, replay, bounded scoring
or chunked head.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from sleb.blocks import BlockSwitch, find_blocks
from sleb.cli import main
from sleb.nll import full_nll
from sleb.removal import remove_blocks
from sleb.search import fast_search, reference_search

from . import test_architectures as arch
from . import test_surgery as surgery
from .conftest import tiny_llama

LAYERS = 6
ROUNDS = 4
WINDOWS, SEQ, BATCH = 7, 16, 3  # micro-batches of 3, 3 and 1


pytestmark = pytest.mark.usefixtures("one_thread")


def six_layers(config):
    """The same family with LAYERS blocks; per-layer lists repeat their pattern."""
    sub = config.get_text_config()
    n = sub.num_hidden_layers
    for key, value in list(vars(sub).items()):
        if isinstance(value, list) and len(value) == n and key != "eos_token_id":
            setattr(sub, key, [value[i % n] for i in range(LAYERS)])
    sub.num_hidden_layers = LAYERS
    return config


EXTRA = {name: surgery.CASES[key][0] for name, key in [
    ("mixtral", "mixtral"), ("qwen2_moe", "qwen2_moe-mlp_only_layers"), ("qwen3_moe", "qwen3_moe"),
    ("gpt_neo", "gpt_neo"), ("falcon", "falcon"), ("gemma3_conditional", "gemma3-conditional-generation"),
]}
FAMILIES = {**arch.FAMILIES, **EXTRA}


def build(family: str):
    torch.manual_seed(0)
    config = six_layers(FAMILIES[family]())
    if family == "gpt_neo":
        config.attention_types = [[["global", "local"], LAYERS // 2]]
        config.attention_layers = config.expand_attention_types_params(config.attention_types)
    return AutoModelForCausalLM.from_config(config).eval()


# Both barrier settings for every family would double the time; alternate them, with both on a few.
BOTH = ("llama", "gpt_neo", "qwen2_moe")
CASES = [(family, barriers) for i, family in enumerate(FAMILIES)
         for barriers in ([(0, 0), (1, 1)] if family in BOTH else [[(0, 0), (1, 1)][i % 2]])]


@pytest.mark.parametrize("family, barriers", CASES, ids=[f"{f}-{b[0]}{b[1]}" for f, b in CASES])
def test_every_round_matches_physically_pruned_copies(family, barriers):
    """Round-k scores of fast and reference search equal the NLL of copies with the blocks really removed."""
    dense = build(family)
    windows = torch.randint(3, arch.VOCAB, (WINDOWS, SEQ), generator=torch.Generator().manual_seed(4))
    fast = fast_search(dense, windows, ROUNDS, *barriers, batch_size=BATCH, progress=False)
    ref = reference_search(dense, windows, ROUNDS, *barriers, batch_size=BATCH, progress=False)
    assert fast.order == ref.order and len(set(fast.order)) == ROUNDS

    oracle: dict[frozenset, float] = {}

    def removed_nll(blocks) -> float:
        key = frozenset(blocks)
        if key not in oracle:
            pruned = remove_blocks(copy.deepcopy(dense), sorted(key))
            oracle[key] = float(full_nll(pruned, windows).sum())
        return oracle[key]

    for k, (f, r) in enumerate(zip(fast.rounds, ref.rounds, strict=True)):
        before = fast.order[:k]
        alive = [i for i in range(LAYERS) if i not in before]
        assert sorted(int(c) for c in r["scores"]) == alive[barriers[0]: len(alive) - barriers[1]]
        for c, score in r["scores"].items():
            assert score == pytest.approx(removed_nll(before + [int(c)]), rel=1e-5), (k, c)
        for c, score in f["scores"].items():
            assert score == pytest.approx(removed_nll(before + [int(c)]), rel=1e-5), (k, c)
        for c, partial in f["dropped"].items():  # stopped early: already worse than the winner
            assert f["score"] < partial <= removed_nll(before + [int(c)]) * (1 + 1e-5)
        assert set(f["scores"]) | set(f["dropped"]) == set(r["scores"])
        best = min(oracle[frozenset(before + [c])] for c in alive[barriers[0]: len(alive) - barriers[1]])
        assert f["score"] == pytest.approx(best, rel=1e-5)


def test_fast_search_does_fewer_block_forwards_than_the_reference():
    """Prefix reuse and bounded scoring compute fewer block forwards (a count, not a time) on a deeper model."""
    dense = tiny_llama(num_layers=12)
    windows = torch.randint(3, 128, (12, SEQ), generator=torch.Generator().manual_seed(5))
    fast = fast_search(dense, windows, ROUNDS, batch_size=2, progress=False)
    ref = reference_search(dense, windows, ROUNDS, batch_size=2, progress=False)
    fast_count = [r["block_forwards"] for r in fast.rounds]
    ref_count = [r["block_forwards"] for r in ref.rounds]
    # the reference runs every alive block but the candidate, on every window, for every candidate
    alive = [12 - k for k in range(ROUNDS)]
    assert ref_count == [(a - 2) * (a - 1) * 12 for a in alive]
    assert all(f < r for f, r in zip(fast_count, ref_count, strict=True)), (fast_count, ref_count)
    assert fast_search(dense, windows, ROUNDS, batch_size=2, progress=False).rounds[0]["block_forwards"] == \
        fast_count[0]


@pytest.mark.parametrize("method", ["sleb", "angular"])
def test_every_saved_variant_equals_dense_with_its_order_bypassed(method, tiny_model_dir, tmp_path):
    """Multi-ratio prune (nested SLEB, non-nested angular): each folder == dense with its removal_order bypassed."""
    out = tmp_path / "variants"
    assert main(["prune", str(tiny_model_dir), "--ratio", "0.2,0.34,0.5", "--method", method, "--out", str(out),
                 "--nsamples", "4", "--seqlen", "32", "-q"]) == 0
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokens = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(6))
    folders = sorted(out.iterdir())
    assert len(folders) == 3
    orders = []
    for folder in folders:
        record = json.loads((folder / "sleb.json").read_text())
        assert record["verification"]["reload"] == "passed"
        orders.append(record["removal_order"])
        with torch.inference_mode(), BlockSwitch(find_blocks(dense).blocks) as switch, \
                switch.state(skip=set(record["removal_order"])):
            expected = dense(input_ids=tokens, use_cache=False).logits
        pruned = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert pruned.config.num_hidden_layers == 6 - len(record["removal_order"])
        with torch.inference_mode():
            torch.testing.assert_close(pruned(input_ids=tokens, use_cache=False).logits, expected,
                                       rtol=1e-5, atol=1e-5)
    assert sorted(len(o) for o in orders) == [1, 2, 3]
