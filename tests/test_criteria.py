"""The criteria registry: every consumer reads it, and an unknown method is an error everywhere."""

from __future__ import annotations

import pytest

from sleb.blocks import BlockSwitch, find_blocks
from sleb.calibration import Calibration
from sleb.cli import build_parser
from sleb.criteria import (
    CRITERIA,
    DEFAULT_METHOD,
    METHODS,
    PICK_METHODS,
    get_criterion,
    is_nested,
    method_forwards,
    method_from_slug,
    method_label,
    method_slug,
)
from sleb.demo.report import round_scores
from sleb.demo.ui import METHOD_LABELS
from sleb.errors import SlebError
from sleb.nll import full_nll
from sleb.prune import find_removal, resolve_method


def test_cli_app_and_prune_offer_exactly_the_registry():
    prune = build_parser()._subparsers._group_actions[0].choices["prune"]
    method = next(a for a in prune._actions if a.dest == "method")
    assert tuple(method.choices) == PICK_METHODS == (DEFAULT_METHOD, *CRITERIA) and METHODS == tuple(CRITERIA)
    assert method.default == DEFAULT_METHOD == "sleb+refine"  # the measured-best pick; `sleb` is the exact greedy
    assert METHODS[0] == "sleb" and {"block-influence", "angular", "oneshot-ppl", "last", "random"} <= set(METHODS)
    assert list(METHOD_LABELS) == list(PICK_METHODS) and all(METHOD_LABELS[m] == CRITERIA[m].label for m in METHODS)
    assert "refinement" in method_label(DEFAULT_METHOD)


def test_unknown_method_is_refused_not_free():
    with pytest.raises(SlebError, match="Unknown method 'evolution'"):
        get_criterion("evolution")
    with pytest.raises(SlebError, match="Unknown method"):
        find_removal(None, None, 1, "evolution")
    for bad in ("evolution+refine", "sleb+refine+refine", "sleb+validated"):
        with pytest.raises(SlebError, match="Unknown method"):
            resolve_method(bad)
    assert resolve_method("angular")[1] is None and resolve_method("angular+refine")[1].seeds == "all"


def test_cost_estimates_grow_with_the_work():
    """Criteria that read data cost at least one pass; SLEB's greedy more with more rounds, less when resumed."""
    for c in CRITERIA.values():
        reads = c.name not in ("last", "random")
        assert (c.forwards(30, 6, 0, 1, 1) >= 1) == reads, c.name
    sleb = CRITERIA["sleb"]
    assert sleb.forwards(30, 6, 0, 1, 1) > sleb.forwards(30, 3, 0, 1, 1) > sleb.forwards(30, 3, 2, 1, 1) > 0
    assert is_nested("sleb") and not is_nested("angular") and not is_nested("sleb+refine")


def test_method_slugs_read_back_and_refined_plans_cost_more():
    """Folder and repo names use the slug (no '+'); it reads back to the method. A refined method's estimate adds
    its seeds and a refinement pass to its criterion's, however many of the criterion's rounds are saved."""
    for method in (*PICK_METHODS, "angular+refine"):
        assert "+" not in method_slug(method) and method_from_slug(method_slug(method)) == method
        assert method_from_slug(method) == method
    assert method_slug("sleb+refine") == "sleb-refine" and method_from_slug("block-refine") == "block-refine"
    assert resolve_method("sleb-refine")[0] == "sleb" and resolve_method("sleb-refine")[1].seeds == "all"
    for done in (0, 2, 3):
        greedy = method_forwards("sleb", 30, 3, done)
        assert greedy == CRITERIA["sleb"].forwards(30, 3, done, 1, 1)
        assert method_forwards("sleb+refine", 30, 3, done) > greedy + CRITERIA["oneshot-ppl"].forwards(30, 3, 0, 1, 1)
    assert method_forwards("sleb+refine", 30, 6) > method_forwards("sleb+refine", 30, 3)


@pytest.mark.parametrize("method", METHODS)
def test_each_criterion_scores_and_removes_through_the_registry(llama, windows, method):
    """The registry's run gives a valid set; its per-token SLEB scores equal the model's own NLL of that set."""
    calib = Calibration(windows=windows, info={"fingerprint": "w", "num_windows": 8, "seqlen": 32})
    result = find_removal(llama, calib, 3, method, progress=False)
    assert result.method == method and len(set(result.removed(3))) == 3
    assert all(1 <= b <= 4 for b in result.removed(3))
    if get_criterion(method).nested:
        assert result.removed(2) == result.removed(3)[:2]
    values = round_scores(result, 3)
    if method == "sleb":
        with BlockSwitch(find_blocks(llama).blocks) as switch, switch.state(skip=result.removed(3)):
            nll = float(full_nll(llama, windows).sum()) / (8 * 31)
        assert values[-1] == pytest.approx(nll, rel=1e-5)
