"""Inputs sleb must refuse: encoder models, remote code, quantized or damaged weights, corrupt order and state files.

Each is a SlebError (exit code 2 from the CLI) whose message names the problem, and no
output folder is left behind.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import transformers as tf

from sleb.cli import main
from sleb.errors import SlebError
from sleb.loading import load_model

FAST = ["--nsamples", "4", "--seqlen", "32", "-q"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SLEB_CACHE", str(tmp_path / "cache"))


def save_tiny(model_class, config, path, tokenizer_dir):
    torch.manual_seed(0)
    model_class(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, path / name)
    return path


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def refused(args, tmp_path, caplog, message):
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--out", str(out)]) == 2
    assert message in caplog.text, caplog.text
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bert_is_refused_as_an_encoder(tiny_model_dir, tmp_path, caplog):
    """BERT would load as BertLMHeadModel; its bidirectional layers are not a causal LM's blocks."""
    config = tf.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64)
    path = save_tiny(tf.BertForMaskedLM, config, tmp_path / "bert", tiny_model_dir)
    with pytest.raises(SlebError, match="encoder model"):
        load_model(str(path))
    refused(["prune", str(path), "--num-remove", "1", *FAST], tmp_path, caplog, "encoder model")


def test_t5_is_refused_as_encoder_decoder(tiny_model_dir, tmp_path):
    config = tf.T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    path = save_tiny(tf.T5ForConditionalGeneration, config, tmp_path / "t5", tiny_model_dir)
    with pytest.raises(SlebError, match="encoder-decoder"):
        load_model(str(path))


def test_remote_code_config_is_refused(tiny_model_dir, tmp_path, caplog):
    path = copy_model(tiny_model_dir, tmp_path / "remote")
    edit_config(path, auto_map={"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    refused(["prune", str(path), "--num-remove", "1", *FAST], tmp_path, caplog, "auto_map")


def test_quantized_model_is_refused(tiny_model_dir, tmp_path):
    path = copy_model(tiny_model_dir, tmp_path / "quantized")
    edit_config(path, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    with pytest.raises(SlebError, match="quantized \\(bitsandbytes\\)"):
        load_model(str(path))


def test_truncated_weights_are_refused(tiny_model_dir, tmp_path, caplog):
    path = copy_model(tiny_model_dir, tmp_path / "truncated")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(["prune", str(path), "--num-remove", "1", *FAST], tmp_path, caplog, "damaged or truncated")


@pytest.mark.parametrize("content, message", [
    ('{"search": {"method": "sleb", "num_blocks": 6, "order": [1, 2', "is not a sleb.json"),
    ('{"search": {"method": "sleb", "num_blocks": 6, "order": ["one", 2]}}', "is corrupt"),
    ('{"search": {"method": "sleb", "num_blocks": 6, "order": [1, 99]}}', "is corrupt"),
    ('{"search": {"method": "sleb", "num_blocks": 6, "order": [2, 2]}}', "is corrupt"),
    ('{"search": {"method": "sleb", "num_blocks": 6, "order": 3}}', "is corrupt"),
    ('[1, 2]', "is not a sleb.json"),
])
def test_corrupt_order_file_is_refused(tiny_model_dir, tmp_path, caplog, content, message):
    order = tmp_path / "order.json"
    order.write_text(content)
    refused(["remove", str(tiny_model_dir), "--order", str(order), "--num-remove", "1", "-q"], tmp_path, caplog,
            message)


def test_corrupt_search_state_is_refused(tiny_model_dir, tmp_path, caplog):
    state = tmp_path / "state.json"
    state.write_text('{"key": "abc", "rounds": [{"remo')
    refused(["prune", str(tiny_model_dir), "--num-remove", "1", "--state", str(state), *FAST], tmp_path, caplog,
            "is corrupt")
