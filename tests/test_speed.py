"""The speed benchmark on tiny random Llamas: every figure, the ideal speedup by hand, prompt clipping.

No timing is asserted (timings are noisy on a shared machine), only that each is there and sane.
"""

import copy
import gc
import logging
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sleb.errors import SlebError
from sleb.removal import remove_blocks
from sleb.speed import format_speed, matmul_params, measure_speed, random_prompt, special_ids

from .conftest import train_tokenizer

HIDDEN, INTER, VOCAB, LAYERS, HEADS, KV_HEADS, CONTEXT = 48, 96, 300, 6, 4, 2, 64
HEAD_DIM = HIDDEN // HEADS
REMOVED = [1, 4]
NEW_TOKENS, BATCH1_NEW, BATCH = 6, 5, 3
SETTINGS = dict(decode_batch=BATCH, new_tokens=NEW_TOKENS, batch1_new_tokens=BATCH1_NEW, repeats=2, warmup=1,
                threads=1, prefill_samples=2)

PER_MODEL = [
    "prefill_s", "prefill_tok_s", "ttft_s", "generate_b1_s", "generate_decode_b1_tok_s",
    "decode_b1_s", "decode_b1_step_s", "decode_b1_tok_s", "decode_b1_total_tok_s",
    "decode_batch_s", "decode_batch_step_s", "decode_batch_tok_s", "decode_batch_total_tok_s",
    "blocks", "params", "model_bytes", "peak_rss_bytes", "peak_rss_over_baseline_bytes", "peak_estimate_bytes",
    "block_matmul_params", "head_params", "flops_per_token_params", "prefill_flops",
    "decode_b1_flops_per_token", "decode_batch_flops_per_token", "attention_width",
]
FIGURES = ["prefill", "ttft", "decode_b1", "decode_b1_total", "decode_batch", "decode_batch_total",
           "generate_decode_b1"]
SETTING_KEYS = ["prompt_len", "prompt_len_requested", "prompt_clipped", "context_limit", "decode_batch",
                "new_tokens", "batch1_new_tokens", "repeats", "warmup", "device", "dtype", "threads",
                "torch_version", "transformers_version", "prefill_logits", "decode_method", "memory_note"]


def tiny_pair(tie: bool = True):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
        tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    dense = LlamaForCausalLM(config).eval()
    return dense, remove_blocks(copy.deepcopy(dense), REMOVED)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def clipped():
    """A run whose 100-token prompt must be clipped to the 64-position context, with a trained tokenizer."""
    dense, pruned = tiny_pair(tie=True)
    handler = _Records()
    logger = logging.getLogger("sleb.speed")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = measure_speed(dense, pruned, train_tokenizer(), prompt_len=100, **SETTINGS)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return result, handler.messages


def hand_flops(blocks: int, prompt_len: int):
    """(prefill FLOPs, decode-b1 FLOPs/token, decode-batch FLOPs/token, params-only FLOPs/token) by hand."""
    attn = HEADS * HEAD_DIM
    per_block = HIDDEN * attn + 2 * HIDDEN * KV_HEADS * HEAD_DIM + attn * HIDDEN + 3 * HIDDEN * INTER
    head = VOCAB * HIDDEN
    prefill = 2 * blocks * per_block * prompt_len + 2 * head + 4 * blocks * attn * prompt_len * (prompt_len + 1) // 2

    def decode(new):
        steps = new - 1
        keys = sum(prompt_len + k for k in range(1, steps + 1))
        return (2 * (blocks * per_block + head) * steps + 4 * blocks * attn * keys) / steps

    return prefill, decode(BATCH1_NEW), decode(NEW_TOKENS), 2 * (blocks * per_block + head)


def test_every_figure_is_there_finite_and_positive(clipped):
    result, _ = clipped
    for key in SETTING_KEYS:
        assert key in result, key
    for name in ("dense", "pruned"):
        for key in PER_MODEL:
            value = result[f"{name}_{key}"]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, key, value)
        assert result[f"{name}_other_matmul_params"] == 0
    for key in FIGURES:
        for prefix in ("speedup_", "fidelity_"):
            assert math.isfinite(result[prefix + key]) and result[prefix + key] > 0, prefix + key
    for key in ("prefill", "decode_b1", "decode_batch", "params"):
        assert math.isfinite(result[f"ideal_speedup_{key}"])
    for key in ("prefill", "ttft", "decode_b1", "decode_batch"):
        assert math.isfinite(result[f"paired_speedup_{key}"]) and result[f"paired_speedup_{key}"] > 0, key
    for name in ("dense", "pruned"):
        runs = result["runs"][name]
        assert len(runs["prefill_s"]) == len(runs["ttft_s"]) == 2 * 2
        assert len(runs["decode_b1_s"]) == len(runs["decode_batch_s"]) == len(runs["generate_b1_s"]) == 2
        assert len(runs["decode_b1_step_s"]) == 2 * (BATCH1_NEW - 1)
        assert len(runs["decode_batch_step_s"]) == 2 * (NEW_TOKENS - 1)
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["threads"] == 1
    assert result["prefill_logits"] == "last"


def test_blocks_and_parameters(clipped):
    result, _ = clipped
    assert result["dense_blocks"] == LAYERS
    assert result["pruned_blocks"] == LAYERS - len(REMOVED)
    assert result["dense_params"] > result["pruned_params"]
    assert result["dense_model_bytes"] > result["pruned_model_bytes"]


def test_ideal_speedup_is_the_flop_ratio_by_hand(clipped):
    result, _ = clipped
    L = result["prompt_len"]
    dense = hand_flops(LAYERS, L)
    pruned = hand_flops(LAYERS - len(REMOVED), L)
    assert result["dense_prefill_flops"] == dense[0] and result["pruned_prefill_flops"] == pruned[0]
    for i, key in enumerate(["prefill", "decode_b1", "decode_batch", "params"]):
        assert result[f"ideal_speedup_{key}"] > 1
        assert result[f"ideal_speedup_{key}"] == pytest.approx(dense[i] / pruned[i], rel=1e-12), key
    # The head counts although tied to the input embedding.
    assert result["dense_head_params"] == result["pruned_head_params"] == VOCAB * HIDDEN
    # measured / ideal is what the table calls it
    assert result["fidelity_prefill"] == pytest.approx(result["speedup_prefill"] / result["ideal_speedup_prefill"])


def test_prompt_is_clipped_to_the_context_limit_and_recorded(clipped):
    result, messages = clipped
    assert result["context_limit"] == CONTEXT
    assert result["prompt_len_requested"] == 100
    assert result["prompt_clipped"] is True
    assert result["prompt_len"] == CONTEXT - NEW_TOKENS  # room left for the longest generation
    assert result["dense_prefill_tok_s"] == pytest.approx(result["prompt_len"] / result["dense_prefill_s"])
    assert any("clipped from 100 to 58" in m for m in messages), messages
    assert "clipped from 100" in format_speed(result)


def test_format_speed_table(clipped):
    table = format_speed(clipped[0])
    for word in ("dense", "pruned", "speedup", "ideal", "prefill, batch 1", "time to first token",
                 f"decode, batch {BATCH}", "peak process RSS"):
        assert word in table, word


def test_no_tokenizer_untied_head_and_all_logits():
    dense, pruned = tiny_pair(tie=False)
    threads = torch.get_num_threads()
    result = measure_speed(dense, pruned, None, prompt_len=16, decode_batch=2, new_tokens=3, repeats=1, warmup=0,
                           threads=1, generate_check=False, prefill_logits="all")
    assert result["prompt_clipped"] is False and result["prompt_len"] == 16
    assert torch.get_num_threads() == threads and gc.isenabled()  # settings restored
    assert "speedup_generate_decode_b1" not in result
    counts = matmul_params(dense)
    assert counts["head"] == VOCAB * HIDDEN and counts["num_blocks"] == LAYERS
    # with every position's logits, the prefill pays the head per token
    blocks_flops = 2 * counts["blocks"] * 16 + 4 * LAYERS * counts["attention_width"] * 16 * 17 // 2
    assert result["dense_prefill_flops"] == blocks_flops + 2 * VOCAB * HIDDEN * 16
    assert result["prefill_logits"] == "all"


def test_random_prompt_avoids_special_tokens_and_is_seeded():
    tokenizer = train_tokenizer()
    dense, _ = tiny_pair()
    special = special_ids(tokenizer, dense.config)
    assert {0, 1, 2} <= special
    a = random_prompt(len(tokenizer), special, 4, 200, seed=3)
    assert torch.equal(a, random_prompt(len(tokenizer), special, 4, 200, seed=3))
    assert not set(a.unique().tolist()) & special


def test_refuses_one_model_twice():
    dense, _ = tiny_pair()
    with pytest.raises(SlebError):
        measure_speed(dense, dense, None, prompt_len=8, new_tokens=2, repeats=1)
