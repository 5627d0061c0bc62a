"""Perplexity protocol, the eval CLI and the comparison report, on a tiny local model."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleb.cli import main
from sleb.errors import SlebError
from sleb.evaluation.heldout import evaluate_ppl, ppl_text
from sleb.evaluation.perplexity import perplexity, token_windows

from .conftest import DATA_DIR, check_speed_figures


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_perplexity_equals_a_hand_computation(tiny):
    model, tokenizer = tiny
    windows = token_windows(tokenizer, "The quick brown fox jumps over the lazy dog. " * 40, seqlen=48, max_windows=3)
    got = perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model(windows).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="sum")
    assert got["predicted_tokens"] == 3 * 47
    assert math.isclose(got["nll"], float(nll), rel_tol=1e-5)
    assert math.isclose(got["perplexity"], math.exp(float(nll) / (3 * 47)), rel_tol=1e-5)


def test_evaluation_text_follows_the_paper_and_never_touches_calibration_rows():
    wiki, source = ppl_text("wikitext2")
    lines = (DATA_DIR / "wikitext-2-raw" / "wiki.test.rows.jsonl").read_text(encoding="utf-8").split("\n")
    rows = [json.loads(line)["text"] for line in lines if line]
    assert len(rows) == 4358 and rows.count("") == 1467  # the Hub's test split, row for row
    assert wiki == "\n\n".join(rows) and source == "local:wikitext-2-raw/wiki.test.rows.jsonl[0:4358]"
    assert wiki.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")  # as the paper's code sees it
    c4, source = ppl_text("c4")
    assert source == "local:c4-sample/c4_sample.jsonl[0:1100]"
    rows = [json.loads(line)["text"] for line in (DATA_DIR / "c4-sample" / "c4_sample.jsonl").read_text().splitlines()]
    assert c4 == " ".join(rows[:1100]) and rows[1100] not in c4


def test_windows_are_clipped_to_the_context_and_recorded(tiny):
    model, tokenizer = tiny  # max_position_embeddings is 256
    result = evaluate_ppl(model, tokenizer, ["wikitext2", "c4"], seqlen=2048, max_windows=2, progress=False)
    for name in ("wikitext2", "c4"):
        assert result[name]["seqlen"] == 256 and result[name]["windows"] == 2
        assert math.isfinite(result[name]["perplexity"]) and result[name]["predicted_tokens"] == 2 * 255
    with pytest.raises(SlebError, match="known: wikitext2, c4"):
        evaluate_ppl(model, tokenizer, ["ptb"])


def test_eval_cli_writes_json_for_a_plain_folder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_model_dir), "--ppl", "wikitext2", "--max-windows", "2", "--eval-seqlen", "64",
                 "--json", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    assert result["sleb"] is None and result["ppl"]["wikitext2"]["windows"] == 2
    assert "ppl wikitext2" in capsys.readouterr().out


def test_compare_writes_table_and_plots(tiny_model_dir, tmp_path):
    out = tmp_path / "report"
    argv = ["compare", str(tiny_model_dir), "--ratios", "0.2,0.4", "--methods", "sleb,last,angular",
            "--nsamples", "4", "--seqlen", "32", "--ppl", "wikitext2", "--max-windows", "2", "--eval-seqlen", "64",
            "--out", str(out), "-q"]
    assert main(argv) == 0
    report = json.loads((out / "compare.json").read_text())
    assert set(report["methods"]) == {"sleb", "last", "angular"} and report["counts"] == [1, 2]
    for data in report["methods"].values():
        for ratio, k in (("0.2", 1), ("0.4", 2)):
            assert len(data["results"][ratio]["removed"]) == k
            assert math.isfinite(data["results"][ratio]["ppl"]["wikitext2"]["perplexity"])
    assert report["speed"]["0.4"]["ideal"] > report["speed"]["0.2"]["ideal"] > 1
    table = (out / "compare.md").read_text()
    assert "| sleb |" in table and "| last |" in table and "![ppl_wikitext2](ppl_wikitext2.png)" in table
    for png in ("ppl_wikitext2.png", "speedup.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_prunes_here_and_reports_every_figure(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", str(tiny_model_dir), "--num-remove", "2", "--nsamples", "4", "--seqlen", "32",
            "--prompt-len", "16", "--new-tokens", "4", "--decode-batch", "2", "--repeats", "1",
            "--json", str(out), "-q"]
    assert main(argv) == 0
    figures = json.loads(out.read_text())
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert figures["ideal_speedup_prefill"] > 1
    check_speed_figures(figures, AutoModelForCausalLM.from_pretrained(tiny_model_dir), removed=2, repeats=1,
                        prefill_samples=3, new_tokens=4)
    assert figures["dense_model"] == str(tiny_model_dir)
