"""Search state and cached results belong to one set of weights; records say what was saved."""

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from sleb.baselines import block_influence
from sleb.calibration import Calibration
from sleb.cli import main
from sleb.errors import SlebError
from sleb.prune import find_removal, search_key
from sleb.search import fast_search

from .conftest import tiny_llama


def calibration(windows):
    return Calibration(windows=windows, info={"fingerprint": "same-data"})


def key(model, windows):
    return search_key(model, calibration(windows), "sleb", 1, 1, 0, False)


def test_same_config_different_weights_give_different_keys(windows):
    a, b = tiny_llama(seed=0), tiny_llama(seed=1)
    assert a.config.to_json_string() == b.config.to_json_string()
    assert key(a, windows) != key(b, windows)
    assert key(a, windows) == key(tiny_llama(seed=0), windows)
    offloaded = tiny_llama(seed=0)
    cpu_offload(offloaded, execution_device="cpu")  # weights on meta: read from the hook's weights map
    assert key(offloaded, windows) == key(a, windows)


def test_rewritten_folder_neither_resumes_stale_rounds_nor_reuses_cached_results(tmp_path, windows):
    folder, windows = tmp_path / "model", windows[:4, :16]
    tiny_llama(seed=0).save_pretrained(folder)
    old = AutoModelForCausalLM.from_pretrained(folder).eval()
    find_removal(old, calibration(windows), 1, "sleb", progress=False)
    find_removal(old, calibration(windows), 1, "block-influence", progress=False)

    tiny_llama(seed=1).save_pretrained(folder)  # the same folder, rewritten with other weights
    new = AutoModelForCausalLM.from_pretrained(folder).eval()
    got = find_removal(new, calibration(windows), 1, "sleb", progress=False)
    want = fast_search(tiny_llama(seed=1), windows, 1, progress=False)
    assert got.rounds[0]["scores"] == want.rounds[0]["scores"]
    got = find_removal(new, calibration(windows), 1, "block-influence", progress=False)
    want = block_influence(tiny_llama(seed=1), windows, 1, progress=False)
    for block, score in want.rounds[0]["scores"].items():
        assert math.isclose(got.rounds[0]["scores"][block], score, rel_tol=1e-6)


def test_truncated_baseline_cache_is_a_clear_error(windows):
    model = tiny_llama()
    result = find_removal(model, calibration(windows), 1, "block-influence", progress=False)
    from sleb.prune import state_dir

    path = state_dir() / result.settings["state_file"]
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(SlebError, match="corrupt.*delete it"):
        find_removal(model, calibration(windows), 1, "block-influence", progress=False)


def test_baseline_cache_is_written_whole_or_not_at_all(windows, monkeypatch):
    model = tiny_llama()
    result = find_removal(model, calibration(windows), 1, "block-influence", progress=False)
    from sleb.prune import state_dir

    path = state_dir() / result.settings["state_file"]
    before = path.read_text()
    path.write_text(json.dumps({"key": "another search", "result": {}}))
    written = path.read_text()
    real_write = Path.write_text

    def disk_full(self, data, *args, **kwargs):  # the write dies half-way, as on a full disk
        real_write(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        find_removal(model, calibration(windows), 1, "block-influence", progress=False)
    monkeypatch.undo()
    assert path.read_text() == written  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    assert before != written


def test_record_gives_the_saved_dtype(tiny_model_dir, tmp_path):
    out = tmp_path / "bf16"
    assert main(["remove", str(tiny_model_dir), "--blocks", "1", "--save-dtype", "bfloat16", "--out", str(out),
                 "-q"]) == 0
    record = json.loads((out / "sleb.json").read_text())
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        saved = {f.get_tensor(name).dtype for name in f.keys()}
    assert saved == {torch.bfloat16} and record["dtype"] == "bfloat16"
