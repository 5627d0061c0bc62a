"""Swap refinement against brute force: every k-subset scored on physically pruned copies.

The oracle for a set's NLL is `full_nll` (the model's own logits) of a deep copy with the set
removed by `remove_blocks`; for the KL objective, `F.kl_div` between that copy's logits and the
dense model's. It shares no code with the refinement's bypass, replay, bound or chunked head.
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from sleb.cli import main
from sleb.errors import SlebError
from sleb.nll import full_nll
from sleb.refine import RefineSpec, check_seed, fast_refine, reference_refine, swaps
from sleb.removal import remove_blocks
from sleb.search import SearchState

from .conftest import tiny_llama

LAYERS, WINDOWS, SEQ, BATCH = 8, 7, 16, 3
ALLOWED = range(1, LAYERS - 1)  # barriers 1 and 1

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dense():
    return tiny_llama(num_layers=LAYERS, seed=3)


@pytest.fixture(scope="module")
def data():
    return torch.randint(3, 128, (WINDOWS, SEQ), generator=torch.Generator().manual_seed(4))


class Oracle:
    """Objective of a removal set from a physically pruned copy, memoised per set."""

    def __init__(self, model, windows, objective="nll"):
        self.model, self.windows, self.objective = model, windows, objective
        self.memo: dict[frozenset, float] = {}
        with torch.inference_mode():
            self.dense_logits = model(input_ids=windows).logits.float()

    def __call__(self, blocks) -> float:
        key = frozenset(blocks)
        if key not in self.memo:
            pruned = remove_blocks(copy.deepcopy(self.model), sorted(key))
            if self.objective == "nll":
                self.memo[key] = float(full_nll(pruned, self.windows).sum())
            else:
                with torch.inference_mode():
                    logits = pruned(input_ids=self.windows).logits.float()
                self.memo[key] = float(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(self.dense_logits, -1),
                                                log_target=True, reduction="sum"))
        return self.memo[key]


def path(record) -> list[tuple]:
    """The accepted swaps, without their timings."""
    return [(s["in"], s["out"], s["removed"], s["score"]) for s in record["swaps"]]


def neighbours(blocks):
    return [frozenset(blocks) - {r} | {a} for r, a in swaps(sorted(blocks), LAYERS, 1, 1)]


@pytest.mark.parametrize("objective", ["nll", "kl"])
@pytest.mark.parametrize("k", [2, 3])
def test_refined_sets_are_swap_local_optima_never_worse_than_their_seeds(dense, data, objective, k):
    """From every seed of a spread: the result is swap-locally optimal by brute force, its score the oracle's."""
    oracle = Oracle(dense, data, objective)
    subsets = [frozenset(s) for s in itertools.combinations(ALLOWED, k)]
    best = min(subsets, key=oracle)  # the global optimum, by brute force over every k-subset
    seeds = [list(ALLOWED)[-k:], list(ALLOWED)[:k], sorted(best)]
    for seed in seeds:
        record = fast_refine(dense, data, seed, spec=RefineSpec(objective=objective), batch_size=BATCH,
                             progress=False)
        got = frozenset(record["removed"])
        assert record["local_optimum"] is True
        assert record["score"] == pytest.approx(oracle(got), rel=1e-5, abs=1e-6)
        assert record["seed_score"] == pytest.approx(oracle(seed), rel=1e-5, abs=1e-6)
        assert oracle(got) <= oracle(seed) * (1 + 1e-6)
        assert all(oracle(n) >= oracle(got) * (1 - 1e-6) for n in neighbours(got)), (seed, got)
        for step in record["swaps"]:  # each accepted swap's score is the oracle's for its set
            assert step["score"] == pytest.approx(oracle(step["removed"]), rel=1e-5, abs=1e-6)
        if seed == sorted(best):
            assert got == best and record["swaps"] == []


@pytest.mark.parametrize("objective", ["nll", "kl"])
def test_fast_refinement_follows_the_plain_loop(dense, data, objective):
    """Replay, the bound and the memory of scored sets change nothing: same swaps, same scores, fewer evaluations."""
    seed = [4, 5, 6]
    fast = fast_refine(dense, data, seed, spec=RefineSpec(objective=objective), batch_size=BATCH, progress=False)
    plain = reference_refine(dense, data, seed, spec=RefineSpec(objective=objective), batch_size=BATCH,
                             progress=False)
    assert fast["swaps"], "the seed should need at least one swap for this test to mean anything"
    assert [(s["in"], s["out"]) for s in fast["swaps"]] == [(s["in"], s["out"]) for s in plain["swaps"]]
    for f, p in zip(fast["swaps"], plain["swaps"], strict=True):
        assert f["score"] == pytest.approx(p["score"], rel=1e-5, abs=1e-6)
    assert fast["removed"] == plain["removed"] and fast["evaluations"] < plain["evaluations"]
    assert fast["block_forwards"] < plain["block_forwards"]


def test_a_memory_shared_between_seeds_changes_the_path_of_neither(dense, data):
    """A second seed refined with the first's memory of scored sets takes the same swaps with fewer evaluations."""
    alone = fast_refine(dense, data, [1, 2, 3], batch_size=BATCH, progress=False)
    memo: dict = {}
    fast_refine(dense, data, [4, 5, 6], batch_size=BATCH, progress=False, memo=memo)
    shared = fast_refine(dense, data, [1, 2, 3], batch_size=BATCH, progress=False, memo=memo)
    assert path(shared) == path(alone) and shared["removed"] == alone["removed"]
    assert shared["evaluations"] < alone["evaluations"]


def test_budget_zero_is_a_no_op_that_says_so(dense, data):
    record = fast_refine(dense, data, [2, 3], spec=RefineSpec(budget=0), progress=False)
    assert record["removed"] == [2, 3] and record["swaps"] == [] and "budget 0" in record["note"]


def test_bad_seeds_are_refused_naming_the_blocks(dense, data):
    with pytest.raises(SlebError, match=r"Seed blocks \[8, 9\] are out of range"):
        fast_refine(dense, data, [3, 8, 9], progress=False)
    with pytest.raises(SlebError, match=r"Seed blocks \[0, 7\] lie inside the barriers"):
        check_seed([0, 3, 7], LAYERS, 1, 1)
    with pytest.raises(SlebError, match="objective"):
        fast_refine(dense, data, [3], spec=RefineSpec(objective="ppl"), progress=False)


def test_interrupted_refinement_resumes_from_its_last_accepted_swap(dense, data, tmp_path):
    """A refinement stopped after its first accepted swap (the budget of one pass) continues to the same end."""
    seed = [4, 5, 6]
    whole = fast_refine(dense, data, seed, batch_size=BATCH, progress=False)
    assert len(whole["swaps"]) >= 2
    state = SearchState(tmp_path / "refine.json", "key")
    first_pass = 1 + len(swaps(seed, LAYERS, 1, 1))
    cut = fast_refine(dense, data, seed, spec=RefineSpec(budget=first_pass), batch_size=BATCH, state=state,
                      progress=False)
    assert path(cut) == path(whole)[:1] and cut["local_optimum"] is False
    saved = json.loads(state.path.read_text())["rounds"]
    assert saved[-1]["removed"] == whole["swaps"][0]["removed"] and saved[-1]["done"] == "budget"
    resumed = fast_refine(dense, data, seed, batch_size=BATCH, state=state, progress=False)
    assert resumed["removed"] == whole["removed"] and resumed["score"] == pytest.approx(whole["score"], rel=1e-9)
    assert path(resumed) == path(whole)
    with pytest.raises(SlebError, match="starts from"):
        fast_refine(dense, data, [1, 2, 3], batch_size=BATCH, state=state, progress=False)


def test_default_prune_is_refined_non_nested_sets_each_equal_to_dense_with_its_set_bypassed(tiny_model_dir, tmp_path):
    """`prune` with no method (sleb+refine: SLEB then `--refine all`) at two counts: sleb.json says not nested,
    records the swaps, and each folder's logits equal the dense model's with exactly its recorded set removed."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    assert main(["prune", str(tiny_model_dir), "--num-remove", "1,2", "--nsamples", "4",
                 "--seqlen", "16", "--device", "cpu", "--out", str(out), "-q"]) == 0
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    folders = sorted(out.iterdir())
    assert [f.name.split("-")[:2] for f in folders] == [["sleb", "refine"]] * 2  # no '+' in folder names
    for folder in folders:
        record = json.loads((folder / "sleb.json").read_text())
        assert record["method"] == "sleb+refine" and record["nested"] is False
        assert record["search"]["settings"]["refine_seeds"] == "all"
        k = len(record["removed"])
        refine = record["search"]["settings"]["refine"][str(k)]
        assert refine["removed"] == record["removed"] and refine["seed_method"] in ("sleb", "block-influence",
                                                                                     "angular", "oneshot-ppl", "last")
        assert refine["score"] <= min(refine["seed_scores"].values() or [refine["seed_score"]]) * (1 + 1e-6)
        pruned = AutoModelForCausalLM.from_pretrained(folder).eval()
        want = remove_blocks(copy.deepcopy(dense), record["removed"])
        with torch.inference_mode():
            assert torch.allclose(pruned(input_ids=ids).logits, want(input_ids=ids).logits, atol=1e-5)


def test_validated_pick_is_the_candidate_of_lowest_held_out_nll(dense, data):
    """The search sees only the first windows; the pick is the brute-force argmin of held-out NLL among candidates."""
    from sleb.calibration import Calibration
    from sleb.criteria import CRITERIA
    from sleb.pick import ValidateSpec
    from sleb.prune import choose
    from sleb.search import fast_search

    windows = torch.cat([data, torch.randint(3, 128, (5, SEQ), generator=torch.Generator().manual_seed(9))])
    calib = Calibration(windows=windows, info={"fingerprint": "x", "data": "c4", "num_windows": 12, "seqlen": SEQ})
    result = choose(dense, None, calib, [2, 3], "sleb", refine=RefineSpec(), validate=ValidateSpec(fraction=0.25),
                    batch_size=BATCH, progress=False)
    assert result.method == "sleb+validated" and result.settings["nested"] is False
    search, heldout = windows[:9], windows[9:]
    oracle = Oracle(dense, heldout)
    tokens = heldout.shape[0] * (SEQ - 1)
    for k in (2, 3):
        record = result.settings["validation"][str(k)]
        cands = record["candidates"]
        assert cands["sleb"]["removed"] == sorted(fast_search(dense, search, k, batch_size=BATCH,
                                                              progress=False).order[:k])
        assert {"sleb", "sleb+refine"} | {n for n, c in CRITERIA.items() if c.cheap and not c.seeded} == set(cands)
        for entry in cands.values():
            assert entry["nll"]["c4"] == pytest.approx(oracle(entry["removed"]) / tokens, rel=1e-5)
        best = min(cands.values(), key=lambda e: oracle(e["removed"]))
        assert result.removed(k) == best["removed"] == cands[record["pick"]]["removed"]
        others = [oracle(e["removed"]) / tokens for n, e in cands.items() if n != record["pick"]]
        assert record["margin"] == pytest.approx(min(others) - oracle(best["removed"]) / tokens, rel=1e-4, abs=1e-9)


def test_validation_on_generated_text_adds_a_domain(tiny_model_dir, tmp_path):
    """`search --validate --validate-generated` scores every candidate on both domains; the pick has the lowest mean."""
    out = tmp_path / "search.json"
    assert main(["search", str(tiny_model_dir), "--num-remove", "2", "--validate", "0.5", "--validate-generated",
                 "--nsamples", "4", "--seqlen", "16", "--device", "cpu", "--json", str(out), "-q"]) == 0
    record = json.loads(out.read_text())["search"]
    validation = record["settings"]["validation"]["2"]
    assert set(validation["domains"]) == {"generated", next(iter(validation["domains"]))} and \
        len(validation["domains"]) == 2
    means = {n: e["mean"] for n, e in validation["candidates"].items()}
    assert all(len(e["nll"]) == 2 for e in validation["candidates"].values())
    assert validation["pick"] == min(means, key=lambda n: (means[n], n))
    assert record["by_count"]["2"] == validation["candidates"][validation["pick"]]["removed"]
    with pytest.raises(SystemExit):
        main(["search", str(tiny_model_dir), "--num-remove", "2", "--validate", "x"])
    assert main(["search", str(tiny_model_dir), "--num-remove", "2", "--validate", "1.5", "--device", "cpu",
                 "--nsamples", "4", "--seqlen", "16"]) == 2


def test_orders_ship_one_refined_set_per_count_and_compare_refuses_refine(tiny_model_dir, tmp_path, monkeypatch):
    """`sleb.orders --refine` writes a non-nested order holding a set for every count; compare, which runs each
    method as named, says it cannot refine (name sleb+refine among its methods instead)."""
    from sleb.orders import find_order
    from sleb.orders.__main__ import main as write_orders

    monkeypatch.setenv("SLEB_ORDERS_DIR", str(tmp_path))
    assert write_orders([str(tiny_model_dir), "--method", "sleb", "--refine", "--num-remove", "2", "--nsamples", "2",
                         "--seqlen", "16", "--device", "cpu", "--out-dir", str(tmp_path), "-q"]) == 0
    written = json.loads(next(tmp_path.glob("*-sleb+refine.json")).read_text())
    result = find_order(written["base_model"], "sleb+refine", written["num_blocks"], tmp_path)
    assert result is not None and result.covers(1) and result.covers(2) and not result.covers(3)
    assert len(result.removed(1)) == 1 and len(result.removed(2)) == 2
    assert main(["compare", str(tiny_model_dir), "--ratios", "0.2", "--refine", "--device", "cpu"]) == 2
