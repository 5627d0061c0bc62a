"""The user-facing path on a tiny local model: calibration, CLI, records, resume, errors."""

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleb.calibration import CalibrationSpec, build_calibration
from sleb.cli import main
from sleb.data import C4_EVAL_ROWS, calibration_documents, read_text_file
from sleb.errors import SlebError
from sleb.loading import load_model, resolve
from sleb.prune import blocks_for_ratio, find_removal
from sleb.removal import save_checkpoint
from sleb.search import SearchState, fast_search

from .conftest import DATA_DIR

FAST = ["--nsamples", "6", "--seqlen", "32", "-q"]


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_c4_calibration_rows_are_disjoint_from_evaluation_rows():
    docs = calibration_documents("c4")
    all_rows = read_text_file(DATA_DIR / "c4-sample" / "c4_sample.jsonl").texts
    assert docs.texts == all_rows[C4_EVAL_ROWS:]
    assert not set(docs.texts) & set(all_rows[:C4_EVAL_ROWS])
    assert docs.source.startswith("local:c4-sample/c4_sample.jsonl[1100:")


def test_random_windows_are_seeded_and_recorded(tokenizer):
    spec = CalibrationSpec(nsamples=5, seqlen=40, seed=3)
    a, b = build_calibration(tokenizer, spec), build_calibration(tokenizer, spec)
    c = build_calibration(tokenizer, CalibrationSpec(nsamples=5, seqlen=40, seed=4))
    assert a.windows.shape == (5, 40) and torch.equal(a.windows, b.windows)
    assert not torch.equal(a.windows, c.windows)
    assert a.info["protocol"] == "windows" and a.info["num_tokens"] == 200
    assert a.info["fingerprint"] == b.info["fingerprint"] != c.info["fingerprint"]


def test_token_budget_takes_consecutive_windows(tokenizer):
    calib = build_calibration(tokenizer, CalibrationSpec(tokens=100, seqlen=32))
    assert calib.windows.shape == (3, 32) and calib.info["protocol"] == "tokens"
    text = "\n\n".join(calibration_documents("c4").texts[:50])  # the calibration rows, joined as documented
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    assert torch.equal(calib.windows.reshape(-1), ids[:96])


def test_calibration_text_shorter_than_a_window_is_refused(tokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only a few words here\n")
    with pytest.raises(SlebError, match="shorter than one window"):
        build_calibration(tokenizer, CalibrationSpec(source=str(short), nsamples=2, seqlen=64))


def test_prune_cli_writes_a_standard_checkpoint_with_its_record(tiny_model_dir, tmp_path):
    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir), "--num-remove", "2", "--out", str(out), *FAST]) == 0
    record = json.loads((out / "sleb.json").read_text())
    assert record["num_blocks_dense"] == 6 and record["num_blocks"] == 4
    assert record["removed"] == sorted(record["removal_order"]) and len(record["removal_order"]) == 2
    assert len(record["search"]["rounds"]) == 2 and all(r["scores"] for r in record["search"]["rounds"])
    # the default pick: SLEB's greedy rounds kept, then swap refinement from the best seed; one set per count
    assert record["method"] == "sleb+refine" and record["nested"] is False
    settings = record["search"]["settings"]
    assert settings["seed_method"] == "sleb" and settings["refine_seeds"] == "all"
    assert sorted(settings["refine"]["2"]["removed"]) == record["removed"]
    assert settings["seed_order"] == [r["removed"] for r in record["search"]["rounds"]]
    calibration = record["search"]["settings"]["calibration"]
    assert calibration["num_windows"] == 6 and calibration["seqlen"] == 32 and calibration["seed"] == 0
    assert {"torch", "transformers", "sleb"} <= set(record["versions"]) and record["timings"]["search_s"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    assert record["parameters"] == sum(p.numel() for p in model.parameters()) < record["parameters_dense"]
    assert AutoTokenizer.from_pretrained(out)("hello").input_ids
    assert not list(tmp_path.glob(".pruned.partial-*"))


def test_several_ratios_reuse_one_nested_search(tiny_model_dir, tmp_path):
    """`--method sleb` is the paper's exact greedy: one nested order serves every ratio."""
    out = tmp_path / "variants"
    assert main(["prune", str(tiny_model_dir), "--ratio", "0.2,0.5", "--method", "sleb", "--out", str(out),
                 *FAST]) == 0
    records = sorted((json.loads(p.read_text()) for p in out.glob("*/sleb.json")), key=lambda r: r["ratio"])
    assert [r["num_blocks"] for r in records] == [5, 3]
    assert all(r["method"] == "sleb" and r["nested"] is True and "refine" not in r["search"]["settings"]
               for r in records)
    small, large = records
    assert large["removal_order"][:1] == small["removal_order"]
    assert small["search"]["order"] == large["search"]["order"]
    for path in out.iterdir():
        assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == len(
            AutoModelForCausalLM.from_pretrained(path).model.layers)


def test_existing_output_is_refused_unless_overwrite(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = ["prune", str(tiny_model_dir), "--num-remove", "1", "--out", str(out), *FAST]
    with caplog.at_level(logging.ERROR):
        assert main(args) == 2
    assert "already exist" in caplog.text and (out / "keep.txt").read_text() == "precious"
    assert main([*args, "--overwrite"]) == 0
    assert (out / "sleb.json").is_file() and not (out / "keep.txt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--ratio", "1.5"], "strictly between 0 and 1"),
    (["--ratio", "0"], "strictly between 0 and 1"),
    (["--num-remove", "5"], "at most 4 can go"),
    (["--num-remove", "2", "--calib", "/nowhere/text.txt"], "does not exist"),
])
def test_bad_budgets_and_data_get_clear_errors(tiny_model_dir, tmp_path, caplog, argv, message):
    with caplog.at_level(logging.ERROR):
        assert main(["prune", str(tiny_model_dir), *argv, "--out", str(tmp_path / "o"), *FAST]) == 2
    assert message in caplog.text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model, message", [
    ("/no/such/folder", "does not exist"),
    ("missing.gguf", "does not exist"),
    ("someone/not-a-real-model", "Hugging Face Hub"),
])
def test_unloadable_models_get_clear_errors(model, message):
    with pytest.raises(SlebError, match=message):
        load_model(model)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(SlebError, match="no config.json"):
        resolve(str(tmp_path))


def test_interrupted_search_resumes_from_its_state(tiny_model_dir, tmp_path):
    model, tokenizer, _ = load_model(str(tiny_model_dir))
    calib = build_calibration(tokenizer, CalibrationSpec(nsamples=6, seqlen=32))
    state = tmp_path / "state.json"
    first = find_removal(model, calib, 1, progress=False, state_path=state)  # as if stopped after round 1
    saved = json.loads(state.read_text())
    assert [r["removed"] for r in saved["rounds"]] == first.order
    resumed = find_removal(model, calib, 3, progress=False, state_path=state)
    fresh = fast_search(model, calib.windows, 3, progress=False)
    assert resumed.order == fresh.order and resumed.rounds[0] == first.rounds[0]
    other = build_calibration(tokenizer, CalibrationSpec(nsamples=6, seqlen=32, seed=9))
    with pytest.raises(SlebError, match="different search"):
        fast_search(model, other.windows, 2, progress=False, state=SearchState(state, "another-key"))


def test_search_json_then_remove_applies_the_same_blocks(tiny_model_dir, tmp_path, caplog):
    picked = tmp_path / "picked.json"  # the default pick holds a set for the count searched, and no other
    assert main(["search", str(tiny_model_dir), "--num-remove", "3", "--json", str(picked), *FAST]) == 0
    chosen = json.loads(picked.read_text())["search"]["by_count"]["3"]
    assert main(["remove", str(tiny_model_dir), "--order", str(picked), "--out", str(tmp_path / "p3"), "-q"]) == 0
    assert json.loads((tmp_path / "p3" / "sleb.json").read_text())["removed"] == sorted(chosen)
    with caplog.at_level(logging.ERROR):
        assert main(["remove", str(tiny_model_dir), "--order", str(picked), "--num-remove", "2",
                     "--out", str(tmp_path / "p2"), "-q"]) == 2
    assert "not nested" in caplog.text and not (tmp_path / "p2").exists()
    order_file = tmp_path / "order.json"  # SLEB's greedy order: every prefix is a set
    assert main(["search", str(tiny_model_dir), "--num-remove", "3", "--method", "sleb", "--json", str(order_file),
                 *FAST]) == 0
    order = json.loads(order_file.read_text())["search"]["order"]
    out = tmp_path / "removed"
    assert main(["remove", str(tiny_model_dir), "--order", str(order_file), "--num-remove", "2",
                 "--out", str(out), "-q"]) == 0
    record = json.loads((out / "sleb.json").read_text())
    assert record["removal_order"] == order[:2]
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
    assert main(["remove", str(tiny_model_dir), "--blocks", "1,4", "--out", str(tmp_path / "manual"), "-q"]) == 0
    assert json.loads((tmp_path / "manual" / "sleb.json").read_text())["removed"] == [1, 4]


def test_info_reports_blocks_and_parameters(tiny_model_dir, capsys):
    assert main(["info", str(tiny_model_dir), "--json", "-q"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_blocks"] == 6 and info["blocks_path"] == "model.layers"
    assert info["block_class"] == "LlamaDecoderLayer" and info["parameters"] > info["parameters_outside_blocks"]


def test_a_failed_save_leaves_no_folder(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    out = tmp_path / "half"
    with pytest.raises(AttributeError):
        save_checkpoint(model, object(), out)  # the tokenizer step fails after the weights were written
    assert not out.exists() and not list(tmp_path.iterdir())


def test_ratio_to_block_count():
    assert blocks_for_ratio(30, 0.2) == 6 and blocks_for_ratio(32, 0.2) == 6 and blocks_for_ratio(30, 0.01) == 1


def test_hub_only_data_offline_says_where_local_data_goes(tmp_path):
    with pytest.raises(SlebError, match="Hugging Face Hub.*--data-dir"):
        calibration_documents("wikitext2")
    with pytest.raises(SlebError, match="Hugging Face Hub"):
        calibration_documents("c4", data_root=tmp_path)  # no local copy there: falls through to the Hub
    with pytest.raises(SlebError, match="Unknown calibration source"):
        calibration_documents("not-a-dataset")


def test_cpu_search_without_size_options_uses_the_study_budget(tiny_model_dir, tmp_path, tokenizer):
    from sleb.calibration import CPU_SEQLEN, CPU_TOKENS

    out = tmp_path / "order.json"
    assert main(["search", str(tiny_model_dir), "--method", "angular", "--num-remove", "2", "--device", "cpu",
                 "--json", str(out), "-q"]) == 0
    used = json.loads(out.read_text())["search"]["settings"]["calibration"]
    expected = build_calibration(tokenizer, CalibrationSpec(tokens=CPU_TOKENS, seqlen=CPU_SEQLEN))
    assert used["fingerprint"] == expected.info["fingerprint"] and used["protocol"] == "tokens"
    assert main(["search", str(tiny_model_dir), "--method", "angular", "--num-remove", "2", "--device", "cpu",
                 "--seqlen", "64", "--json", str(out), "-q"]) == 0  # one size option: the paper's for the rest
    used = json.loads(out.read_text())["search"]["settings"]["calibration"]
    assert (used["protocol"], used["nsamples"], used["seqlen"]) == ("windows", 128, 64)
