"""The demo app: through gradio_client against the launched app, its engine directly, and the Space dry run.

Most tests use the tiny local Llama (`tiny_model_dir`) as the app's default model; one runs
the real embedded SmolLM2 with a tiny budget (one block, two calibration windows, few tokens).
"""

import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError

from sleb.calibration import CalibrationSpec
from sleb.demo import DemoConfig, ModelStore, build_demo, online
from sleb.demo.engine import GenSettings, encode_prompt, removal_steps, search_plan, stream_generate
from sleb.demo.zoo_listing import load_zoo, zoo_repos
from sleb.errors import SlebError
from sleb.evaluation.heldout import ppl_text
from sleb.evaluation.perplexity import token_windows
from sleb.loading import DEFAULT_BASE_ID, DEFAULT_MODEL, load_model
from sleb.orders import find_order, model_defaults, shipped_orders
from sleb.orders.__main__ import main as write_orders
from sleb.prune import state_dir
from sleb.removal import remove_blocks
from sleb.search import SearchResult

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio")  # gradio's own pandas calls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(model_dir, **overrides) -> DemoConfig:
    settings = dict(default_model=str(model_dir), calibration=CalibrationSpec(nsamples=2, seqlen=32),
                    ppl_seqlen=64, max_prompt_tokens=64, manifest=Path("/nonexistent/manifest.yaml"))
    return DemoConfig(**{**settings, **overrides})


def launch(config: DemoConfig):
    """Launch the app in this process on a free localhost port; returns (demo, client)."""
    demo = build_demo(config)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    return demo, Client(demo.local_url, verbose=False)


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    demo, client = launch(tiny_config(tiny_model_dir))
    yield client
    client.close()
    demo.close()


def run(client, model, prompt="The quick brown fox", method="sleb", percent=0, blocks=2, new_tokens=6):
    return client.predict(model, method, percent, blocks, prompt, new_tokens, 0, 0, api_name="/run")


def test_pruned_side_equals_the_physically_pruned_model(app, tiny_model_dir):
    """Perplexity and greedy text of the app's pruned side against a deep copy with its blocks really removed."""
    prompt = "The quick brown fox jumps over"
    status, dense, pruned, _healed, _table, _plot, details = run(app, str(tiny_model_dir), prompt=prompt,
                                                                 new_tokens=12)
    assert status == "Done." and len(details["removed"]) == 2, details
    model, tokenizer, _ = load_model(str(tiny_model_dir), device="cpu")
    physical = remove_blocks(copy.deepcopy(model), details["removed"])
    assert physical.config.num_hidden_layers == 4
    # The same windows as the app (the start of WikiText-2 test, 2 x 64 tokens), scored by the model's own logits.
    windows = token_windows(tokenizer, ppl_text("wikitext2")[0][: 40 * 64 * 2], 64, 2)
    with torch.inference_mode():
        nll = [physical(w[None], labels=w[None]).loss.item() for w in windows]
        dense_nll = [model(w[None], labels=w[None]).loss.item() for w in windows]
    assert math.isclose(details["pruned"]["perplexity"], math.exp(sum(nll) / len(nll)), rel_tol=1e-4), details
    assert math.isclose(details["dense"]["perplexity"], math.exp(sum(dense_nll) / len(nll)), rel_tol=1e-4)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = physical.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert pruned == tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert dense == tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)


def test_eight_visitors_at_once_all_answered_with_their_place_in_line(tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    store = ModelStore(config)
    demo = build_demo(config, store)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    clients = [Client(demo.local_url, verbose=False) for _ in range(8)]
    try:
        jobs = [c.submit(str(tiny_model_dir), "last", 0, 2, f"Visitor {i} asks", 48, 0, 0, api_name="/run")
                for i, c in enumerate(clients)]
        finals = [job.result(timeout=600) for job in jobs]
        statuses = [str(update[0]) for job in jobs for update in job.outputs()]
        assert all(final[0] == "Done." and final[1] and final[2] for final in finals), [f[0] for f in finals]
        assert any("in line" in s for s in statuses), statuses  # someone waited and was told where
        assert len(store._models) == 1 and store.loaded(str(tiny_model_dir)).turns.length == 0
    finally:
        for c in clients:
            c.close()
        demo.close()


def test_a_cancelled_request_leaves_the_next_unharmed(tiny_model_dir):
    config = tiny_config(tiny_model_dir, max_new_tokens=240)
    store = ModelStore(config)
    demo = build_demo(config, store)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    client = Client(demo.local_url, verbose=False)
    try:
        job = client.submit(str(tiny_model_dir), "last", 0, 2, "A long story", 240, 0, 0, api_name="/run")
        deadline = time.monotonic() + 300
        while not any("answering" in str(o[0]) for o in job.outputs()) and time.monotonic() < deadline:
            assert not job.done(), job.exception()
            time.sleep(0.05)
        assert job.cancel()
        entry = store.loaded(str(tiny_model_dir))
        while entry.turns.length and time.monotonic() < deadline:  # the cancelled run gives its turn back
            time.sleep(0.1)
        assert entry.turns.length == 0
        status, dense, pruned, *_ , details = run(client, str(tiny_model_dir), method="last", new_tokens=8)
        assert status == "Done." and details["dense"]["tokens"] == 8 and details["pruned"]["tokens"] == 8
    finally:
        client.close()
        demo.close()


def test_offline_is_detected_once_and_fast(monkeypatch, tiny_model_dir):
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: calls.append(a) or real(*a, **k))
    online.forget()
    try:
        start = time.perf_counter()
        assert not online.hub_online() and not online.hub_online()
        assert len(calls) == 1 and time.perf_counter() - start < 5
        assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
        store = ModelStore(tiny_config(tiny_model_dir))
        start = time.perf_counter()
        with pytest.raises(SlebError, match="unreachable"):
            store.get("someone/no-such-model")
        assert time.perf_counter() - start < 5 and len(calls) == 1  # no retries, no second probe
    finally:
        online.forget()


def test_shipped_orders_come_first_and_are_complete(tiny_model_dir, tmp_path, monkeypatch):
    orders = shipped_orders()
    assert orders, "sleb/orders holds no order file"
    for order in orders:
        assert order.result.num_blocks == 30 and order.command.startswith("python -m sleb.orders"), order.path
        assert order.result.settings["calibration"]["num_tokens"] > 0
    smollm = model_defaults(DEFAULT_BASE_ID)
    assert smollm["ratio"] == 0.1 and smollm["why"] and smollm["method"] == "sleb+refine"
    # The app's default (models.json's, or sleb until the refined order ships) answers at once from a shipped order.
    method = ModelStore(tiny_config(tiny_model_dir)).defaults_for(DEFAULT_MODEL)["method"]
    shipped = find_order(DEFAULT_BASE_ID, method, 30)
    assert shipped is not None and shipped.covers(3), "the default model's default order does not ship"
    # A tiny model's order written by the documented command is used with no search at all.
    monkeypatch.setenv("SLEB_ORDERS_DIR", str(tmp_path / "orders"))
    assert write_orders([str(tiny_model_dir), "--method", "block-influence", "--num-remove", "3", "--nsamples", "2",
                         "--seqlen", "32", "--quiet"]) == 0
    written = json.loads(next((tmp_path / "orders").glob("*-block-influence.json")).read_text())
    assert written["search"]["method"] == "block-influence" and len(written["search"]["order"]) == 3
    config = tiny_config(tiny_model_dir)
    store = ModelStore(config)
    entry = store.get(str(tiny_model_dir))
    assert search_plan(store, entry, "block-influence", 2, config.calibration)["rounds"] == 0
    assert search_plan(store, entry, "sleb", 2, config.calibration)["rounds"] == 2
    state = state_dir()
    for file in state.glob("*"):
        file.unlink()
    steps = list(removal_steps(store, entry, "block-influence", 2, config.calibration))
    assert steps[-1].source.startswith("shipped") and steps[-1].result.removed(2) == written["search"]["order"][:2]
    assert not list(state.glob("*"))  # nothing was searched


def test_both_sides_answer_with_speed_and_fewer_blocks(app, tiny_model_dir):
    status, dense, pruned, _healed, table, _plot, details = run(app, str(tiny_model_dir))
    assert status == "Done."
    assert dense and pruned, details
    assert details["dense"]["blocks"] == 6 and details["pruned"]["blocks"] == 4
    assert details["pruned"]["parameters"] < details["dense"]["parameters"]
    assert len(details["removed"]) == 2 and 0 not in details["removed"] and 5 not in details["removed"]
    for side in ("dense", "pruned"):
        stats = details[side]
        assert stats["tokens"] == 6 and stats["done"], stats
        assert stats["ttft_s"] > 0 and stats["total_s"] >= stats["ttft_s"] and stats["decode_tok_s"] > 0, stats
        assert isinstance(stats["perplexity"], float), stats
    speed = details["speedup"]
    assert speed["tokens_compared"] == 6 and not speed["enough"] and speed["decode"] > 0, speed
    assert speed["ideal"]["decode"] > 1 and speed["ideal"]["ttft"] > 1, speed
    assert "speedup" in table and "ms" in table and "Too few tokens" in table


def test_bad_input_is_an_error_and_the_app_keeps_serving(app, tiny_model_dir):
    with pytest.raises(AppError, match="does not exist"):
        run(app, "/nonexistent/model-folder")
    with pytest.raises(AppError, match="limit is 64"):
        run(app, str(tiny_model_dir), prompt="word " * 200)
    with pytest.raises(AppError, match="leaves too few"):
        run(app, str(tiny_model_dir), blocks=5)
    with pytest.raises(AppError, match="Hub is unreachable"):
        run(app, "someone/no-such-model")
    with pytest.raises(AppError, match="Type a prompt"):
        run(app, str(tiny_model_dir), prompt="  ")
    status, dense, pruned, *_ = run(app, str(tiny_model_dir), method="last", blocks=1)
    assert status == "Done." and dense and pruned


@pytest.mark.slow
def test_default_model_through_the_app(app):
    status, dense, pruned, _healed, _table, _plot, details = run(app, "default", blocks=1, new_tokens=8,
                                                                 prompt="Which city is the capital of France?")
    assert status == "Done." and "Paris" in dense, dense
    assert pruned, details
    assert details["chat_template"] and details["num_blocks"] == 30 and details["pruned"]["blocks"] == 29
    assert details["dense"]["decode_tok_s"] > 0 and details["pruned"]["decode_tok_s"] > 0
    # On a CPU with llama.cpp installed, the embedded GGUF runs there, both sides; the table says so.
    assert details["engine"] == details["dense"]["engine"] == details["pruned"]["engine"] == "llamacpp", details
    assert "llama.cpp (GGUF)" in _table and details["speedup"]["comparable"]


def test_the_engine_is_chosen_once_per_model_and_said(tiny_model_dir, monkeypatch):
    from sleb.demo.sides import model_engine, resolve_engine
    from sleb.loading import resolve

    monkeypatch.setenv("SLEB_APP_ENGINE", "torch")
    assert DemoConfig.from_env().engine == "torch"
    monkeypatch.setenv("SLEB_APP_ENGINE", "vllm")
    with pytest.raises(SlebError, match="choose one of auto, torch, llamacpp"):
        DemoConfig.from_env()
    assert resolve_engine("auto") == "llamacpp"  # llama-cpp-python is a requirement
    engine, why = model_engine("llamacpp", resolve(str(tiny_model_dir)))
    assert engine == "torch" and "GGUF" in why  # a folder of safetensors: both sides on torch
    assert model_engine("auto", resolve("default"))[0] == "llamacpp"
    assert model_engine("torch", resolve("default"))[0] == "torch"


def test_cached_generation_under_the_switch_equals_uncached(tiny_model_dir):
    entry = ModelStore(tiny_config(tiny_model_dir)).get(str(tiny_model_dir))
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    for removed in ([], [2, 3], [1, 4]):
        with entry.lock, entry.switch.state(skip=removed), torch.inference_mode():
            cached = entry.model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True, min_new_tokens=10)
            plain = entry.model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False, min_new_tokens=10)
        assert torch.equal(cached, plain), removed
    with entry.lock, entry.switch.state(skip=[2, 3]), torch.inference_mode():
        expected = entry.model.generate(ids, max_new_tokens=10, do_sample=False)
    *_, (text, stats) = stream_generate(entry, ids, [2, 3], GenSettings(max_new_tokens=10))
    assert stats.done and stats.tokens == expected.shape[1] - ids.shape[1]
    assert text == entry.tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)


def test_zoo_orders_are_used_and_a_missing_manifest_is_an_empty_zoo(tiny_model_dir, tmp_path, monkeypatch):
    assert load_zoo(tmp_path / "missing.yaml") == [] and zoo_repos(tmp_path / "missing.yaml") == [DEFAULT_BASE_ID]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({
        "org": "test-zoo", "defaults": {"method": "sleb"},
        "bases": [{"name": "tiny", "model": str(tiny_model_dir), "base_model": "test/tiny", "license": "mit",
                   "ratios": [0.2, 0.5]},
                  {"name": "big", "model": "test/big", "license": "mit", "ratios": [0.1], "requires_gpu": True}]}))
    variants = load_zoo(manifest)
    assert [v.repo for v in variants] == ["test-zoo/tiny-sleb-20", "test-zoo/tiny-sleb-50", "test-zoo/big-sleb-10"]
    assert zoo_repos(manifest) == ["test/tiny", "test-zoo/tiny-sleb-20", "test-zoo/tiny-sleb-50"]
    monkeypatch.setenv("SLEB_ZOO_DIR", str(tmp_path / "built"))
    record = tmp_path / "built" / "tiny-sleb-50" / "sleb.json"
    record.parent.mkdir(parents=True)
    published = SearchResult(method="sleb", num_blocks=6, order=[4, 1, 3], rounds=[{"removed": b, "score": 1.0}
                                                                                 for b in (4, 1, 3)])
    record.write_text(json.dumps({"method": "sleb", "search": published.to_dict()}))
    config = tiny_config(tiny_model_dir, manifest=manifest)
    store = ModelStore(config)
    entry = store.get("zoo:test-zoo/tiny-sleb-20")
    assert entry.name == str(tiny_model_dir)
    steps = list(removal_steps(store, entry, "sleb", 2, config.calibration))
    assert steps[-1].result.removed(2) == [4, 1] and steps[-1].source == "zoo: test-zoo/tiny-sleb-50"
    assert len(steps) == 1  # no search ran


def test_models_are_cached_checked_and_refused_when_too_large(tiny_model_dir):
    store = ModelStore(tiny_config(tiny_model_dir, max_models=1))
    entry = store.get(str(tiny_model_dir))
    assert store.get(str(tiny_model_dir)) is entry
    with pytest.raises(SlebError, match="parameters"):
        ModelStore(tiny_config(tiny_model_dir, max_params=1000)).get(str(tiny_model_dir))
    with pytest.raises(SlebError, match="limit is 64"):
        encode_prompt(entry, "word " * 200, 64)


def test_space_dry_run_writes_a_deployable_folder(tmp_path):
    out = tmp_path / "space"
    run = subprocess.run([sys.executable, str(ROOT / "space" / "deploy.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    gradio_pin = next(line.split("==")[1] for line in (ROOT / "requirements.txt").read_text().splitlines()
                      if line.startswith("gradio=="))
    assert front["sdk"] == "gradio" and str(front["sdk_version"]) == gradio_pin
    assert (out / front["app_file"]).is_file() and (out / "sleb" / "demo" / "ui.py").is_file()
    assert DEFAULT_BASE_ID in front["models"]
    requirements = (out / "requirements.txt").read_text()
    assert f"gradio=={gradio_pin}" in requirements and "-e ." not in requirements and "pytest" not in requirements
    assert not list(out.rglob("__pycache__"))
    failed = subprocess.run([sys.executable, str(ROOT / "space" / "deploy.py"), "--repo-id", "someone/space"],
                            capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert failed.returncode == 2 and "unreachable" in failed.stderr, failed.stderr


def test_space_folder_starts_from_its_own_files_and_answers(tmp_path, tiny_model_dir):
    """The dry-run folder, alone: its imports are its own `sleb` or pinned in its requirements.txt, and it answers."""
    import ast
    from importlib.metadata import packages_distributions

    out = tmp_path / "space"
    subprocess.run([sys.executable, str(ROOT / "space" / "deploy.py"), "--dry-run", "--out", str(out)], check=True,
                   capture_output=True, timeout=120)
    pinned = {line.split("==")[0].strip().lower().replace("_", "-")
              for line in (out / "requirements.txt").read_text().splitlines() if "==" in line}
    distributions = packages_distributions()
    for path in out.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                for name in [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("sleb", "__future__"):
                        continue
                    dists = {d.lower().replace("_", "-") for d in distributions.get(top, [])}
                    assert dists & pinned, f"{path.relative_to(out)} imports {top}, not in requirements.txt"
    assert (out / "sleb" / "orders" / "models.json").is_file() and list((out / "sleb" / "orders").glob("*-*.json"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SLEB_"))}
    env.update(SLEB_APP_MODEL=str(tiny_model_dir), SLEB_STATE_DIR=str(tmp_path / "state"), HF_HUB_OFFLINE="1",
               GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", SLEB_APP_NSAMPLES="2",
               SLEB_APP_SEQLEN="32", GRADIO_ANALYTICS_ENABLED="False",
               SLEB_DATA_DIR=str(ROOT.parent / "shared" / "data"))  # a Space reads these sets from the Hub
    log = (tmp_path / "space.log").open("w")
    server = subprocess.Popen([sys.executable, "-s", "app.py"], cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert server.poll() is None, (tmp_path / "space.log").read_text()[-3000:]
                time.sleep(1)
        status, dense, pruned, *_ = client.predict(str(tiny_model_dir), "last", 0, 2, "Hello there", 6, 0, 0,
                                                    api_name="/run")
        client.close()
        assert status == "Done." and dense and pruned
        text = (tmp_path / "space.log").read_text()
        assert f"from {out / 'sleb'}" in text, text[-3000:]  # the folder's own sleb, not the installed one
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_request_handlers_called_one_by_one(tiny_model_dir):
    """The Run handler's steps alone: the pruned answer and perplexity are the physically pruned model's."""
    from sleb.demo.request import answer, details_of, find_order, perplexities, start_request, table_of

    config = tiny_config(tiny_model_dir)
    store = ModelStore(config)
    with pytest.raises(SlebError, match="leaves too few"):
        start_request(config, store, str(tiny_model_dir), "last", 0, 5, "Hello", 6, 0, 0)
    request = start_request(config, store, str(tiny_model_dir), "last", 0, 2, "The quick brown fox", 8, 0, 0)
    statuses = list(find_order(config, store, request))
    assert "must search first" in statuses[0] and request.removed == [4, 3], statuses
    assert request.ideal["decode"] > 1
    statuses = list(answer(request))
    assert statuses[0] == "Dense model answering…" and statuses[-1] == "Pruned model answering…"
    model, tokenizer, _ = load_model(str(tiny_model_dir), device="cpu")
    physical = remove_blocks(copy.deepcopy(model), [4, 3])
    with torch.inference_mode():
        expected = physical.generate(request.ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert request.texts["pruned"] == tokenizer.decode(expected[0, request.ids.shape[1]:], skip_special_tokens=True)
    ppl = perplexities(config, request)
    windows = token_windows(tokenizer, ppl_text("wikitext2")[0][: 40 * 64 * 2], 64, 2)
    with torch.inference_mode():
        nll = [physical(w[None], labels=w[None]).loss.item() for w in windows]
    assert math.isclose(ppl["pruned"], math.exp(sum(nll) / len(nll)), rel_tol=1e-4)
    details = details_of(config, request, ppl)
    assert details["engine"] == "torch" and details["pruned"]["engine"] == "torch" and details["pruned"]["blocks"] == 4
    assert "transformers (torch)" in table_of(request, ppl)
