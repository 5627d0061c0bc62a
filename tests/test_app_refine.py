"""The app with the default pick, `sleb+refine`: shipped, fallen back from, searched live, reported, healed.

A tiny local Llama of 8 blocks stands in for the embedded model, one whose refined pick for 2 blocks
is not SLEB's greedy set (so applying the wrong one, or skipping the refinement, shows): its orders
are written by the documented command (`python -m sleb.orders ... --refine all`) into a folder of
its own (`SLEB_ORDERS_DIR`) with a `models.json` that makes `sleb+refine` its default. The oracles
are independent of the app: a physically pruned copy's own logits, and `sleb.prune.choose` run on
a fresh copy of the model in a fresh cache.
"""

import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from sleb.calibration import CalibrationSpec, build_calibration
from sleb.demo import DemoConfig, ModelStore, build_demo
from sleb.demo.engine import default_pruning, plan_text, removal_steps, search_plan
from sleb.demo.healed import heal_in_background
from sleb.demo.report import refine_note, removal_figure
from sleb.demo.request import answer, details_of, find_order, perplexities, start_request, table_of
from sleb.demo.ui import make_run
from sleb.demo.zoo_listing import load_zoo
from sleb.evaluation.heldout import ppl_text
from sleb.evaluation.perplexity import token_windows
from sleb.healing import HealSpec, cached_heal_dir
from sleb.loading import load_model
from sleb.orders.__main__ import main as write_orders
from sleb.prune import choose, state_dir
from sleb.removal import remove_blocks
from sleb.search import SearchResult

from .conftest import _isolated_cache, tiny_llama, train_tokenizer

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio"), pytest.mark.usefixtures("one_thread")]

SPEC = HealSpec(methods=("linear",), seqlen=32, heldout=2, linear_tokens=256)  # seconds on the tiny model
CALIB = ["--nsamples", "2", "--seqlen", "32", "--device", "cpu", "--quiet"]
PROMPT = "The quick brown fox jumps over"
NAME = "tiny-llama-8"  # the model folder's name: its orders' and variants' name part


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """8 blocks, seed 1: with 2 C4 windows of 32 tokens, SLEB's greedy removes 2 and 6, refinement 4 and 5."""
    path = tmp_path_factory.mktemp("models") / NAME
    tokenizer = train_tokenizer()
    model = tiny_llama(num_layers=8, vocab=len(tokenizer), seed=1)
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = 0, 1, 2
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(model_dir, **overrides) -> DemoConfig:
    settings = dict(default_model=str(model_dir), calibration=CalibrationSpec(nsamples=2, seqlen=32), ppl_seqlen=64,
                    max_prompt_tokens=64, manifest=Path("/nonexistent/manifest.yaml"), heal_spec=SPEC)
    return DemoConfig(**{**settings, **overrides})


def ship(orders: Path, model_dir, *methods: str, default: str = "sleb+refine") -> dict[str, dict]:
    """Write the tiny model's orders as the docs say (`sleb+refine`: `--method sleb --refine all`), for up to 3
    blocks, and a models.json making `default` its default at 2 of 8 blocks; returns each file's search record."""
    written = {}
    for method in methods:
        args = ["--method", "sleb", "--refine", "all"] if method == "sleb+refine" else ["--method", method]
        assert write_orders([str(model_dir), *args, "--num-remove", "3", *CALIB, "--out-dir", str(orders)]) == 0
        written[method] = json.loads((orders / f"{NAME}-{method}.json").read_text())["search"]
    (orders / "models.json").write_text(json.dumps({NAME: {"method": default, "ratio": 0.25, "why": "t"}}))
    if "sleb+refine" in written:
        refined = written["sleb+refine"]
        assert refined["by_count"]["2"] != sorted(refined["settings"]["seed_order"][:2]), \
            "this test model's refined pick should differ from SLEB's greedy set; choose another seed"
    return written


def ui_method(demo) -> str:
    return next(block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "method")


def physical_ppl(model_dir, removed: list[int], seqlen: int = 64, windows: int = 2) -> float:
    """WikiText-2 perplexity of a physically pruned copy: its own logits, no switch."""
    model, tokenizer, _ = load_model(str(model_dir), device="cpu")
    pruned = remove_blocks(copy.deepcopy(model), removed)
    data = token_windows(tokenizer, ppl_text("wikitext2")[0][: 40 * seqlen * windows], seqlen, windows)
    with torch.inference_mode():
        nll = [pruned(w[None], labels=w[None]).loss.item() for w in data]
    return math.exp(sum(nll) / len(nll))


def test_the_shipped_refined_pick_is_the_default_and_exactly_its_set_is_applied(model_dir, tmp_path,
                                                                                monkeypatch):
    """models.json names sleb+refine and its order ships: the page starts on it, the first answer needs no
    search, and the pruned side is the dense model without exactly the shipped set (a physically pruned copy)."""
    orders = tmp_path / "orders"
    written = ship(orders, model_dir, "sleb", "sleb+refine")
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(orders))
    refined = written["sleb+refine"]
    assert refined["method"] == "sleb+refine" and sorted(refined["by_count"]) == ["1", "2", "3"]
    config = tiny_config(model_dir)
    store = ModelStore(config)
    assert store.defaults_for(str(model_dir))["method"] == "sleb+refine"
    assert ui_method(build_demo(config, store)) == "sleb+refine"
    entry, method, k, result, source = default_pruning(store)
    assert (method, k) == ("sleb+refine", 2) and source == f"shipped: {NAME}-sleb+refine.json"
    assert result.removed(2) == refined["by_count"]["2"]
    for file in state_dir().glob("*"):
        file.unlink()
    run = make_run(config, store)
    outputs = list(run(str(model_dir), "sleb+refine", 25, 0, PROMPT, 8, 0, 0, progress=lambda *a, **k: None))
    status, _dense, pruned_text, _healed, table, _figure, details = outputs[-1]
    assert status == "Done." and not list(state_dir().glob("*"))  # nothing was searched
    shipped_set = refined["by_count"]["2"]
    assert details["removed"] == shipped_set and details["order_source"].startswith("shipped")
    assert details["method_label"].startswith("SLEB + swap refinement") and details["refine"]["seed_method"]
    assert "removed by SLEB + swap refinement" in table
    assert f"Refined pick for 2 blocks: {sorted(shipped_set)}" in table
    # The pruned side against a physically pruned copy: its answer and its perplexity (the model's own logits).
    model, tokenizer, _ = load_model(str(model_dir), device="cpu")
    physical = remove_blocks(copy.deepcopy(model), shipped_set)
    request = start_request(config, store, str(model_dir), "sleb+refine", 25, 0, PROMPT, 8, 0, 0)
    list(find_order(config, store, request))
    list(answer(request))
    with torch.inference_mode():
        expected = physical.generate(request.ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert pruned_text == request.texts["pruned"] == tokenizer.decode(expected[0, request.ids.shape[1]:],
                                                                      skip_special_tokens=True)
    ppl = perplexities(config, request)
    assert math.isclose(ppl["pruned"], physical_ppl(model_dir, shipped_set), rel_tol=1e-4)
    greedy = refined["settings"]["seed_order"][:2]  # SLEB's set for 2 blocks: not the one applied
    assert not math.isclose(ppl["pruned"], physical_ppl(model_dir, greedy), rel_tol=1e-3)


def test_without_the_shipped_refined_order_the_default_falls_back_to_sleb(model_dir, tmp_path, monkeypatch,
                                                                          caplog):
    """models.json names sleb+refine but only SLEB's order ships: the default is sleb (said once in the log and
    on the page), and its first answer still needs no search; with no order at all, nothing falls back."""
    orders = tmp_path / "orders"
    written = ship(orders, model_dir, "sleb")
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(orders))
    config = tiny_config(model_dir)
    store = ModelStore(config)
    caplog.set_level(logging.WARNING, logger="sleb.demo.models")
    defaults = store.defaults_for(str(model_dir))
    assert defaults["method"] == "sleb" and "no sleb+refine order ships" in defaults["why"]
    assert ui_method(build_demo(config, store)) == "sleb"
    warnings = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert len(warnings) == 1 and "sleb+refine" in warnings[0], warnings  # once, however often the page asks
    entry, method, k, result, source = default_pruning(store)
    assert (method, k, source) == ("sleb", 2, f"shipped: {NAME}-sleb.json")
    assert result.removed(2) == written["sleb"]["order"][:2]
    bare = tmp_path / "bare"  # models.json alone: no order ships, so there is nothing instant to fall back on
    bare.mkdir()
    (bare / "models.json").write_text((orders / "models.json").read_text())
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(bare))
    assert ModelStore(config).defaults_for(str(model_dir))["method"] == "sleb+refine"


def test_live_refined_pick_runs_greedy_rounds_then_refines_as_choose_does(model_dir, tmp_path, monkeypatch):
    """Nothing known: the plan costs more than SLEB's alone and says the refinement holds the model; the steps
    are SLEB's rounds, then one refinement; the set equals `choose(..., "sleb+refine")` on a fresh copy in a
    fresh cache; a second count refines again (greedy rounds reused) and both counts stay known."""
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(tmp_path / "no-orders"))
    config = tiny_config(model_dir)
    store = ModelStore(config)
    entry = store.get(str(model_dir))
    greedy = search_plan(store, entry, "sleb", 2, config.calibration)
    plan = search_plan(store, entry, "sleb+refine", 2, config.calibration)
    assert (greedy["rounds"], plan["rounds"], plan["search_rounds"]) == (2, 3, 2)
    assert plan["forwards"] > 2 * greedy["forwards"] and plan["seconds"] > greedy["seconds"]
    text = plan_text(plan, "sleb+refine", 2)
    assert "must search first" in text and "refinement runs as one step that holds the model" in text
    steps = list(removal_steps(store, entry, "sleb+refine", 2, config.calibration))
    assert [(s.done, s.total, s.result is None) for s in steps] == [(1, 3, True), (2, 3, True), (3, 3, False)]
    assert "now refining" in steps[1].status and "best seed" in steps[-1].status
    live = steps[-1].result
    record = live.settings["refine"]["2"]
    assert live.method == "sleb+refine" and len(live.rounds) == 2 and record["seed_method"]

    assert search_plan(store, entry, "sleb+refine", 2, config.calibration)["rounds"] == 0
    one = search_plan(store, entry, "sleb+refine", 1, config.calibration)
    assert (one["rounds"], one["search_rounds"]) == (1, 0)  # SLEB's round is saved: only the refinement runs
    steps = list(removal_steps(store, entry, "sleb+refine", 1, config.calibration))
    both = steps[-1].result
    assert both.covers(1) and both.covers(2) and both.removed(2) == live.removed(2)

    _isolated_cache(tmp_path / "independent-cache", monkeypatch)
    model, tokenizer, _ = load_model(str(model_dir), device="cpu")
    calibration = build_calibration(tokenizer, config.calibration, model.config)
    independent = choose(model, tokenizer, calibration, [2], "sleb+refine", progress=False)
    assert live.removed(2) == independent.removed(2)
    assert live.settings["seed_order"] == independent.settings["seed_order"]
    assert record["seed_method"] == independent.settings["refine"]["2"]["seed_method"]
    assert record["score"] == pytest.approx(independent.settings["refine"]["2"]["score"], rel=1e-5)
    assert both.removed(1) == choose(model, tokenizer, calibration, [1], "sleb+refine", progress=False).removed(1)


def test_a_refined_result_is_reported_honestly(model_dir, tmp_path, monkeypatch):
    """The plot shows SLEB's greedy rounds annotated with the greedy's blocks, the stack is not numbered (a
    refined set has no removal order), and the note names the set, the seed it came from and the swaps."""
    orders = tmp_path / "orders"
    written = ship(orders, model_dir, "sleb+refine")
    result = SearchResult.from_dict(written["sleb+refine"])
    record = result.settings["refine"]["2"]
    greedy = result.settings["seed_order"][:2]
    fig = removal_figure(result, 2, 6)
    stack, scores = fig.axes
    assert not stack.texts  # no removal-order numbers on a refined set
    assert [t.get_text() for t in scores.texts] == [f"#{b}" for b in greedy]
    assert [round(float(y), 6) for y in scores.lines[0].get_ydata()] == [
        round(r["score"] / (2 * 31), 6) for r in written["sleb+refine"]["rounds"][:2]]
    assert f"the pick is {sorted(result.removed(2))}" in scores.get_xlabel()
    note = refine_note(result, 2)
    assert f"Refined pick for 2 blocks: {sorted(record['removed'])}" in note
    assert f"{record['seed_method']}'s set {sorted(record['seed'])}" in note
    assert f"{len(record['swaps'])} swap(s) taken" in note and f"sleb's own set was {sorted(greedy)}" in note
    assert refine_note(SearchResult("sleb", 6, greedy), 2) == ""


def test_refined_zoo_variants_and_healed_folders_by_the_method_slug(model_dir, tmp_path, monkeypatch):
    """A manifest naming sleb+refine lists its variants named by the slug, `...-sleb-refine-<pct>`; their
    per-count sets are merged; a healed folder is found under the slug's name; the pre-warm heals the
    shipped refined set."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "org": "test-zoo", "defaults": {"method": "sleb+refine"},
        "bases": [{"name": "tiny", "model": str(model_dir), "base_model": "test/tiny", "license": "mit",
                   "ratios": [0.125, 0.25]}]}))
    variants = load_zoo(manifest)
    assert [(v.repo, v.method) for v in variants] == [("test-zoo/tiny-sleb-refine-12p5", "sleb+refine"),
                                                      ("test-zoo/tiny-sleb-refine-25", "sleb+refine")]
    monkeypatch.setenv("SLEB_ZOO_DIR", str(tmp_path / "built"))
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(tmp_path / "no-orders"))
    for name, k, blocks in (("tiny-sleb-refine-12p5", 1, [3]), ("tiny-sleb-refine-25", 2, [2, 4])):
        published = SearchResult("sleb+refine", 8, blocks, settings={"refine": {str(k): {"removed": blocks}}},
                                 by_count={k: blocks})
        (tmp_path / "built" / name).mkdir(parents=True)
        (tmp_path / "built" / name / "sleb.json").write_text(json.dumps({"search": published.to_dict()}))
    healed_dir = tmp_path / "healed"
    (healed_dir / "tiny-llama-8-sleb-refine-25-healed").mkdir(parents=True)
    (healed_dir / "tiny-llama-8-sleb-refine-25-healed" / "config.json").write_text("{}")
    config = tiny_config(model_dir, manifest=manifest, healed_dir=healed_dir)
    store = ModelStore(config)
    entry = store.get("zoo:test-zoo/tiny-sleb-refine-25")
    assert store.defaults_for("zoo:test-zoo/tiny-sleb-refine-25")["method"] == "sleb+refine"
    for k, blocks in ((1, [3]), (2, [2, 4])):
        steps = list(removal_steps(store, entry, "sleb+refine", k, config.calibration))
        assert len(steps) == 1 and steps[0].result.removed(k) == blocks and steps[0].source.startswith("zoo")
        assert f"Refined pick for {k} blocks: {blocks}" in refine_note(steps[0].result, k)  # a record with no seed
    assert store.healed_folder(entry, "sleb+refine", 2).name == "tiny-llama-8-sleb-refine-25-healed"
    assert store.healed_folder(entry, "sleb", 2) is None

    orders = tmp_path / "orders"
    written = ship(orders, model_dir, "sleb+refine")
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(orders))
    store = ModelStore(tiny_config(model_dir))
    thread = heal_in_background(store)
    assert thread is not None
    thread.join(timeout=300)
    shipped_set = written["sleb+refine"]["by_count"]["2"]
    folder = cached_heal_dir(str(model_dir), shipped_set, SPEC)
    assert json.loads((folder / "sleb.json").read_text())["removed"] == sorted(shipped_set)
    assert heal_in_background(store) is None


def test_details_name_the_method_label(model_dir, tmp_path, monkeypatch):
    """A plain method's table and details name its label, and carry no refinement record."""
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(tmp_path / "no-orders"))
    config = tiny_config(model_dir)
    store = ModelStore(config)
    request = start_request(config, store, str(model_dir), "last", 0, 2, PROMPT, 4, 0, 0)
    list(find_order(config, store, request))
    list(answer(request))
    ppl = perplexities(config, request)
    details = details_of(config, request, ppl)
    assert details["method_label"] == "last blocks" and "refine" not in details
    assert "removed by last blocks" in table_of(request, ppl)
