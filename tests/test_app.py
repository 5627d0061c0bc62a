"""The demo app: through gradio_client against the launched app, its engine directly, and the Space dry run.

Most tests use the tiny local Llama (`tiny_model_dir`) as the app's default model; one runs
the real embedded SmolLM2 with a tiny budget (one block, two calibration windows, few tokens).
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError

from sleb.calibration import CalibrationSpec
from sleb.demo import DemoConfig, ModelStore, build_demo
from sleb.demo.engine import GenSettings, encode_prompt, removal_steps, stream_generate
from sleb.demo.zoo import load_zoo, zoo_repos
from sleb.errors import SlebError
from sleb.loading import DEFAULT_BASE_ID
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
    status, dense, pruned, _healed, _table, _plot, details = run(app, "default", prompt="What is the capital of France?",
                                                        blocks=1, new_tokens=8)
    assert status == "Done." and "Paris" in dense, dense
    assert pruned, details
    assert details["chat_template"] and details["num_blocks"] == 30 and details["pruned"]["blocks"] == 29
    assert details["dense"]["decode_tok_s"] > 0 and details["pruned"]["decode_tok_s"] > 0


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
