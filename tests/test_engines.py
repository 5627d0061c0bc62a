"""The engines: llama.cpp against transformers' own GGUF loader on the same file and token ids.

Oracles: transformers loading the GGUF itself (its logits, perplexity and greedy tokens), a
kept-blocks file written independently with gguf-py (`tests/gguf_files.py`), and FLOPs counted
from the transformers model's parameters.
"""

from __future__ import annotations

import json
import math
import os
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from sleb.cli import main
from sleb.engines import GenSettings, LlamaCppEngine, TorchEngine, pruned_gguf
from sleb.engines.bench import measure_llamacpp_speed
from sleb.errors import SlebError
from sleb.evaluation.perplexity import perplexity
from sleb.speed import decode_flops, format_speed, matmul_params, prefill_flops
from sleb.speed.flops import gguf_matmul_params
from tests.gguf_files import VOCAB, write_tiny_gguf


def hf_model(path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def tokens_of(engine, ids, settings):
    out = []
    engine.generate(ids, settings, threading.Event(), out.extend)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    dense, kept = root / "dense.gguf", root / "kept.gguf"
    write_tiny_gguf(dense, num_blocks=4)
    write_tiny_gguf(kept, num_blocks=4, blocks=[0, 3])  # blocks 1 and 2 removed, written independently
    return dense, kept


def windows(n=2, seqlen=32):
    return torch.randint(3, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(0))


def test_llamacpp_perplexity_and_greedy_tokens_equal_transformers_on_the_same_file(tiny):
    dense, _ = tiny
    model = hf_model(dense)
    engine = LlamaCppEngine(dense, n_ctx=128, threads=1)
    w = windows()
    expected = perplexity(model, w)["perplexity"]
    assert math.isclose(engine.perplexity(w)["perplexity"], expected, rel_tol=1e-3)
    prompt = w[0, :12]
    with torch.inference_mode():
        out = model.generate(prompt[None], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    settings = GenSettings(max_new_tokens=8)
    assert tokens_of(LlamaCppEngine(dense, n_ctx=128, threads=1, stop_ids=[]), prompt.tolist(), settings) == \
        out[0, 12:].tolist()
    assert tokens_of(TorchEngine(model, None), prompt.tolist(), settings) == out[0, 12:].tolist()


def test_pruned_gguf_is_written_once_and_runs_as_the_independently_written_file(tiny, tmp_path):
    dense, kept = tiny
    path = pruned_gguf(dense, [2, 1], cache=tmp_path)
    stamp = path.stat().st_mtime_ns
    assert pruned_gguf(dense, [1, 2], cache=tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert pruned_gguf(dense, [], cache=tmp_path) == dense
    w = windows()
    got = LlamaCppEngine(path, n_ctx=64, threads=1).perplexity(w)["perplexity"]
    assert got == LlamaCppEngine(kept, n_ctx=64, threads=1).perplexity(w)["perplexity"]
    assert math.isclose(got, perplexity(hf_model(kept), w)["perplexity"], rel_tol=1e-3)


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(SlebError, match="does not exist"):
        LlamaCppEngine(tmp_path / "missing.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(SlebError, match="could not load"):
        LlamaCppEngine(broken)


def test_gguf_flop_counts_equal_those_of_the_loaded_model(tiny):
    dense, kept = tiny
    for path in (dense, kept):
        assert gguf_matmul_params(path) == matmul_params(hf_model(path))


def test_llamacpp_bench_reports_both_files_beside_the_ideal_ratio(tiny, tmp_path):
    dense, kept = tiny
    result = measure_llamacpp_speed(dense, kept, prompt_len=16, new_tokens=4, repeats=1, warmup=0, threads=1)
    d, p = matmul_params(hf_model(dense)), matmul_params(hf_model(kept))
    assert result["ideal_speedup_prefill"] == prefill_flops(d, 16) / prefill_flops(p, 16)
    assert result["ideal_speedup_decode_b1"] == decode_flops(d, 16, 3) / decode_flops(p, 16, 3)
    assert result["dense_blocks"] == 4 and result["pruned_blocks"] == 2
    assert len(result["runs"]["dense"]["decode_b1_step_s"]) == 3 and result["speedup_decode_b1"] > 0
    table = format_speed(result)
    assert "llama.cpp" in table and "decode, batch 1" in table and "GGUF file" in table
    out = tmp_path / "bench.json"
    assert main(["bench", "--engine", "llamacpp", str(dense), str(kept), "--prompt-len", "16", "--new-tokens", "4",
                 "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["engine"] == "llamacpp"
    assert main(["bench", "--engine", "llamacpp", str(dense), str(tmp_path)]) == 2  # a folder is not a GGUF


NEAR_TIE = 0.5  # logits: Q4_1 weights times 8-bit-quantised activations (llama.cpp) vs fp32 on the same weights


@pytest.mark.slow
def test_smollm2_chat_ids_and_greedy_answers_agree_across_engines():
    """The embedded SmolLM2 GGUF: llama.cpp reads the chat template's text as the same ids, and its greedy answer
    on those ids is greedy under transformers' own logits up to near-ties (checked token by token)."""
    from sleb.loading import load_model, resolve

    model, tokenizer, source = load_model("default", device="cpu")
    eos = model.generation_config.eos_token_id
    llama = LlamaCppEngine(os.path.join(resolve("default").path, source.gguf_file), n_ctx=256,
                           stop_ids=eos if isinstance(eos, list) else [eos])
    torch_engine = TorchEngine(model, tokenizer)
    for prompt in ("What is the capital of France?", "Write a haiku about autumn leaves."):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert llama.llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        assert llama.count_tokens(text) == torch_engine.count_tokens(text) == len(ids)
        answer = tokens_of(llama, ids, GenSettings(max_new_tokens=24))
        with torch.inference_mode():
            logits = model(torch.tensor([ids + answer])).logits[0, len(ids) - 1: -1]
        chosen = logits[torch.arange(len(answer)), answer]
        assert (logits.max(-1).values - chosen).max() < NEAR_TIE, tokenizer.decode(answer)
