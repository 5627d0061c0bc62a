"""bf16 makes large calibration budgets affordable on a CPU; the fast search must stay exact there too."""

import pytest
import torch

from sleb.nll import full_nll
from sleb.removal import remove_blocks
from sleb.search import fast_search, reference_search

from .conftest import tiny_llama


def test_fast_search_matches_reference_in_bfloat16():
    model = tiny_llama(num_layers=6).to(torch.bfloat16)
    windows = torch.randint(0, 128, (6, 32), generator=torch.Generator().manual_seed(5))
    fast = fast_search(model, windows, num_remove=3, batch_size=2, progress=False)
    ref = reference_search(model, windows, num_remove=3, batch_size=2, progress=False)
    assert fast.order == ref.order and len(set(fast.order)) == 3
    for f, r in zip(fast.rounds, ref.rounds, strict=True):
        for c, score in f["scores"].items():
            assert score == pytest.approx(r["scores"][c], rel=2e-3)
    # Round 1's winning score is the NLL of a bf16 copy with that block physically removed.
    copy = remove_blocks(tiny_llama(num_layers=6).to(torch.bfloat16), [fast.order[0]])
    expected = float(sum(full_nll(copy, w).sum() for w in windows.split(2)))
    assert fast.rounds[0]["score"] == pytest.approx(expected, rel=2e-3)
