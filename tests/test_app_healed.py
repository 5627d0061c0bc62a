"""The app's healed column: found where a healed checkpoint exists, answering like that checkpoint does alone.

A healed checkpoint of the tiny Llama is made with the real `sleb.healing` code (the linear
fold on a little C4 text); the app's run handler is driven directly (it is a generator) and its
healed answer and perplexity are compared with the checkpoint loaded by plain transformers.
"""

import gc
import json
import logging
import math
import shutil
import weakref
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleb.calibration import CalibrationSpec
from sleb.demo import DemoConfig, ModelStore
from sleb.demo.healed import heal_in_background
from sleb.demo.ui import make_run
from sleb.demo.zoo_listing import load_zoo
from sleb.evaluation.heldout import ppl_text
from sleb.evaluation.perplexity import token_windows
from sleb.healing import HealSpec, cached_heal, cached_heal_dir
from sleb.names import variant_name
from sleb.orders import write_order
from sleb.search import SearchResult

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio")]

SPEC = HealSpec(methods=("linear",), seqlen=32, heldout=2, linear_tokens=256)  # seconds on the tiny model
LAST_TWO = [4, 3]  # what `last` removes from 6 blocks with the last one kept: the healed checkpoint's blocks
PROMPT = "The quick brown fox jumps over"


def tiny_config(model_dir, **overrides) -> DemoConfig:
    settings = dict(default_model=str(model_dir), calibration=CalibrationSpec(nsamples=2, seqlen=32), ppl_seqlen=64,
                    max_prompt_tokens=64, manifest=Path("/nonexistent/manifest.yaml"), heal_spec=SPEC)
    return DemoConfig(**{**settings, **overrides})


def ask(config, store, model, method="last", percent=0, blocks=2, new_tokens=12):
    """Every output the run handler yields for one request."""
    run = make_run(config, store)
    return list(run(str(model), method, percent, blocks, PROMPT, new_tokens, 0, 0, progress=lambda *a, **k: None))


def box_shown(updates) -> list[bool]:
    """Whether the healed box is visible after each yield (an update changes it; plain text leaves it)."""
    states, visible = [], None
    for update in updates:
        box = update[3]
        if isinstance(box, dict):
            assert box["__type__"] == "update"
            visible = box["visible"]
        states.append(visible)
    return states


@pytest.fixture(scope="module")
def healed_checkpoint(tmp_path_factory, tiny_model_dir):
    """The tiny Llama without blocks 4 and 3, healed for real (linear fold), as a checkpoint folder."""
    root = tmp_path_factory.mktemp("healed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEB_CACHE", str(root / "cache"))
        folder = cached_heal(str(tiny_model_dir), LAST_TWO, SPEC, device="cpu")
    return folder


def expected_answer(folder, model_dir, new_tokens=12) -> str:
    """Greedy text of the checkpoint loaded alone by plain transformers: an independent computation."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def expected_perplexity(folder, model_dir) -> float:
    """The same windows as the app (start of WikiText-2 test, 2 x 64 tokens), scored by the model's own loss."""
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    windows = token_windows(tokenizer, ppl_text("wikitext2")[0][: 40 * 64 * 2], 64, 2)
    with torch.inference_mode():
        nll = [model(w[None], labels=w[None]).loss.item() for w in windows]
    return math.exp(sum(nll) / len(nll))


def test_healed_column_answers_like_the_checkpoint_alone_and_goes_with_its_model(healed_checkpoint, tiny_model_dir,
                                                                               tmp_path):
    healed_dir = tmp_path / "healed"
    name = variant_name("tiny-llama", "last", round(2 / 6, 4), healed=True)
    shutil.copytree(healed_checkpoint, healed_dir / name)
    config = tiny_config(tiny_model_dir, healed_dir=healed_dir, max_models=1)
    store = ModelStore(config)
    updates = ask(config, store, tiny_model_dir)
    status, dense, pruned, box, table, _figure, details = updates[-1]
    assert status == "Done." and details["removed"] == LAST_TWO
    assert box == expected_answer(healed_dir / name, tiny_model_dir)
    shown = box_shown(updates)
    assert shown[0] is False and shown[-1] is True  # hidden until the checkpoint is found, then shown
    assert all(s for u, s in zip(updates, shown, strict=True) if u[0] == "Healed model answering…")
    assert table.splitlines()[0] == "| | dense | pruned | healed |"
    healed = details["healed"]
    assert healed["blocks"] == 4 and sorted(healed["removed"]) == [3, 4] and healed["healing"] == "linear"
    assert healed["source"] == f"healed folder: {name}" and healed["parameters"] == details["pruned"]["parameters"]
    assert math.isclose(healed["perplexity"], expected_perplexity(healed_dir / name, tiny_model_dir), rel_tol=1e-4)
    assert healed["perplexity"] != details["pruned"]["perplexity"]  # healing changed the weights
    # Speed over the same number of tokens on every side (the shortest answer's).
    shortest = min(details[side]["tokens"] for side in ("dense", "pruned", "healed"))
    assert details["healed_speedup"]["tokens_compared"] == details["speedup"]["tokens_compared"] == shortest
    assert details["healed_speedup"]["ideal"] == details["speedup"]["ideal"]

    entry = store.loaded(str(tiny_model_dir))
    first = entry.healed
    ask(config, store, tiny_model_dir)
    assert entry.healed is first  # loaded once, kept beside the dense model
    gone = weakref.ref(first.entry.model)
    other = tmp_path / "other-llama"
    shutil.copytree(tiny_model_dir, other)
    store.get(str(other))  # the LRU (one model) unloads the tiny Llama, and its healed model with it
    assert store.loaded(str(tiny_model_dir)) is None and entry.healed is None
    del entry, first
    gc.collect()
    assert gone() is None


def test_without_a_healed_checkpoint_the_box_stays_hidden(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, healed_dir=tmp_path / "empty")
    updates = ask(config, ModelStore(config), tiny_model_dir)
    status, _dense, _pruned, box, table, _figure, details = updates[-1]
    assert status == "Done." and details["removed"] == LAST_TWO
    assert box_shown(updates) == [False] * len(updates) and box == ""
    assert "healed" not in details and "healed_speedup" not in details
    assert table.splitlines()[0] == "| | dense | pruned |"


def test_healed_zoo_variants_are_listed_picked_and_shown_and_offline_never_downloaded(healed_checkpoint,
                                                                                    tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "org": "test-zoo", "defaults": {"method": "last", "heal": {"enabled": True, "method": "linear"}},
        "bases": [{"name": "tiny", "model": str(tiny_model_dir), "base_model": "test/tiny", "license": "mit",
                   "ratios": [0.33, 0.5]},
                  {"name": "plain", "model": "test/plain", "license": "mit", "ratios": [0.1],
                   "heal": {"enabled": False}}]}))
    variants = load_zoo(manifest)
    assert [(v.name, v.healed) for v in variants] == [
        ("tiny-last-33", False), ("tiny-last-33-healed", True), ("tiny-last-50", False),
        ("tiny-last-50-healed", True), ("plain-last-10", False)]
    assert "healed" in variants[1].label and "healed" not in variants[0].label
    monkeypatch.setenv("SLEB_ZOO_DIR", str(tmp_path / "built"))
    shutil.copytree(healed_checkpoint, tmp_path / "built" / "tiny-last-33-healed")
    downloads = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: downloads.append(a) or 1 / 0)
    config = tiny_config(tiny_model_dir, manifest=manifest)
    store = ModelStore(config)
    pick = "zoo:test-zoo/tiny-last-33-healed"
    assert pick in [value for _, value in store.choices()]
    defaults = store.defaults_for(pick)
    assert (defaults["method"], defaults["ratio"]) == ("last", 0.33) and "healed column" in defaults["why"]
    status, _dense, _pruned, box, _table, _figure, details = ask(config, store, pick, percent=33, blocks=0)[-1]
    assert status == "Done." and details["model"] == str(tiny_model_dir)  # a zoo variant loads its base
    assert details["healed"]["source"] == "zoo build: tiny-last-33-healed"
    assert box == expected_answer(tmp_path / "built" / "tiny-last-33-healed", tiny_model_dir)
    # The zoo lists a healed variant at 50% that is not built here: offline, the Hub is never asked.
    updates = ask(config, store, "zoo:test-zoo/tiny-last-50-healed", percent=50, blocks=0)
    assert updates[-1][0] == "Done." and len(updates[-1][6]["removed"]) == 3
    assert not any(box_shown(updates)) and downloads == []


def test_healed_once_at_start_in_the_background_then_shown(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """`SLEB_APP_HEAL=1`: the default pruning is healed by `cached_heal` in a thread; later requests show it."""
    orders = tmp_path / "orders"
    order = SearchResult(method="last", num_blocks=6, order=[4, 3, 2, 1])
    write_order(orders, "tiny-llama", "test/tiny-llama", order, model_argument=str(tiny_model_dir), dtype="float32",
                command="test")
    (orders / "models.json").write_text(json.dumps({"tiny-llama": {"method": "last", "ratio": 0.33, "why": "test"}}))
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(orders))
    monkeypatch.setenv("SLEB_APP_HEAL", "1")
    monkeypatch.setenv("SLEB_APP_MODEL", str(tiny_model_dir))
    assert DemoConfig.from_env().heal_at_start
    config = tiny_config(tiny_model_dir)
    store = ModelStore(config)
    before = ask(config, store, tiny_model_dir, percent=33, blocks=0)
    assert before[-1][0] == "Done." and before[-1][6]["order_source"].startswith("shipped")
    assert not any(box_shown(before))
    caplog.set_level(logging.INFO, logger="sleb.demo.healed")
    thread = heal_in_background(store)
    assert thread is not None and thread.daemon
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert heal_in_background(store) is None  # made once
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "in the background" in messages and "the healed column shows" in messages
    folder = cached_heal_dir(str(tiny_model_dir), LAST_TWO, SPEC)
    assert json.loads((folder / "sleb.json").read_text())["healing"]["methods"] == ["linear"]
    after = ask(config, store, tiny_model_dir, percent=33, blocks=0)
    status, _dense, _pruned, box, _table, _figure, details = after[-1]
    assert status == "Done." and details["healed"]["source"] == "healed here (sleb cache)"
    assert box_shown(after)[-1] and box == expected_answer(folder, tiny_model_dir)


def test_the_launched_page_serves_the_healed_answer(healed_checkpoint, tiny_model_dir, tmp_path):
    """Through Gradio itself (the box is an update, shown): the client gets the healed text."""
    from gradio_client import Client

    from sleb.demo import build_demo
    from tests.test_app import free_port

    name = variant_name("tiny-llama", "last", round(2 / 6, 4), healed=True)
    shutil.copytree(healed_checkpoint, tmp_path / name)
    demo = build_demo(tiny_config(tiny_model_dir, healed_dir=tmp_path))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    client = Client(demo.local_url, verbose=False)
    try:
        status, _dense, _pruned, healed, _table, _plot, details = client.predict(
            str(tiny_model_dir), "last", 0, 2, PROMPT, 12, 0, 0, api_name="/run")
    finally:
        client.close()
        demo.close()
    assert status == "Done." and details["healed"]["blocks"] == 4
    assert healed == expected_answer(tmp_path / name, tiny_model_dir)


def test_every_side_is_timed_over_the_same_number_of_tokens():
    from sleb.demo.engine import GenStats, compare_sides

    def side(n, step):  # first token at 0.5 s, then one every `step` s; the last step slower
        times = [0.5 + i * step for i in range(n)]
        times[-1] += 1.0
        return GenStats(tokens=n, ttft_s=0.5, times=times)

    stats = {"dense": side(20, 0.04), "pruned": side(10, 0.03), "healed": side(15, 0.02)}
    speed = compare_sides(stats)
    assert speed["pruned"]["tokens_compared"] == speed["healed"]["tokens_compared"] == 10
    # Over tokens 1..10 the dense steps are all 0.04 s, healed's 0.02 s (its slow last step is token 15).
    assert speed["healed"]["decode"] == 2.0 and speed["healed"]["dense_ms_per_token"] == 40.0
    assert speed["pruned"]["dense_ms_per_token"] == 40.0
    waiting = compare_sides({**stats, "healed": GenStats()})  # not started: no figures, holds nobody back
    assert waiting["healed"]["tokens_compared"] == 0 and waiting["pruned"]["tokens_compared"] == 10


def test_a_side_on_another_engine_is_shown_but_not_compared():
    """Dense and pruned on llama.cpp, healed on torch: the healed speed ratio is left out and the table says why."""
    from sleb.demo.engine import GenStats, compare_sides
    from sleb.demo.report import stats_table

    def side(engine, step):
        return GenStats(tokens=20, ttft_s=0.1, times=[0.1 + i * step for i in range(20)], engine=engine)

    stats = {"dense": side("llamacpp", 0.02), "pruned": side("llamacpp", 0.015), "healed": side("torch", 0.08)}
    speed = compare_sides(stats, {"decode": 1.19, "ttft": 1.25})
    assert speed["pruned"]["comparable"] and not speed["healed"]["comparable"]
    sides = {name: {"blocks": 30, **s.as_dict()} for name, s in stats.items()}
    table = stats_table(sides, speed)
    assert "| engine (what measured the speed) | llama.cpp (GGUF) | llama.cpp (GGUF) | transformers (torch) |" in table
    assert "**1.33x** (ideal 1.19x)" in table and "– (on torch, dense on another engine)" in table


def test_a_healed_checkpoint_that_does_not_fit_is_left_out_and_the_request_answered(healed_checkpoint, tiny_model_dir,
                                                                                   tmp_path, caplog):
    """A checkpoint under the name of 3 removed blocks that has 4 blocks (2 removed): refused once, logged."""
    name = variant_name("tiny-llama", "last", 0.5, healed=True)
    shutil.copytree(healed_checkpoint, tmp_path / name)
    config = tiny_config(tiny_model_dir, healed_dir=tmp_path)
    store = ModelStore(config)
    caplog.set_level(logging.WARNING, logger="sleb.demo.healed")
    for _ in range(2):
        updates = ask(config, store, tiny_model_dir, blocks=3, new_tokens=4)
        assert updates[-1][0] == "Done." and "healed" not in updates[-1][6] and not any(box_shown(updates))
    refusals = [r.getMessage() for r in caplog.records if "Not showing" in r.getMessage()]
    assert len(refusals) == 1 and "it has 4 blocks, not 3" in refusals[0]
