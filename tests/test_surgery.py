"""Block removal on layouts whose config indexes layers, and the checks around saving.

Each case is a tiny random model. The oracle is independent of the removal code: the
dense model's own logits with the removed blocks bypassed (the blocks simply pass their
input on). A saved checkpoint, reloaded with plain transformers, must give those logits
and load every weight.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from transformers import AutoModelForCausalLM

from sleb.blocks import BlockSwitch, find_blocks
from sleb.errors import SlebError
from sleb.removal import remove_blocks, save_checkpoint

VOCAB = 128
LLAMA_LIKE = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2}
MOE = {"moe_intermediate_size": 16, "num_experts": 4, "num_experts_per_tok": 2}
ROUTED = {"moe_intermediate_size": 16, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1}
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]


pytestmark = pytest.mark.usefixtures("one_thread")


def gemma3_multimodal():
    text = {**LLAMA_LIKE, "num_hidden_layers": 5, "head_dim": 8, "sliding_window": 4, "layer_types": MIXED}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14}
    return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)


# name -> (config, blocks to remove). Each removal breaks a config that is not remapped.
CASES = {
    # in memory [MoE, dense, MoE] after removing block 1; an unmapped list rebuilds [MoE, MoE, dense]
    "qwen2_moe-mlp_only_layers": (lambda: tf.Qwen2MoeConfig(
        **LLAMA_LIKE, **MOE, num_hidden_layers=4, shared_expert_intermediate_size=16, mlp_only_layers=[2]), [1]),
    # MoE every 2nd block (1, 3); keeping 0, 2, 3 needs [dense, dense, MoE], which no step describes
    "qwen2_moe-decoder_sparse_step": (lambda: tf.Qwen2MoeConfig(
        **LLAMA_LIKE, **MOE, num_hidden_layers=4, shared_expert_intermediate_size=16, decoder_sparse_step=2), [1]),
    "qwen3_moe": (lambda: tf.Qwen3MoeConfig(
        **LLAMA_LIKE, **MOE, num_hidden_layers=5, head_dim=8, decoder_sparse_step=2, mlp_only_layers=[0]), [0]),
    "mixtral": (lambda: tf.MixtralConfig(
        **LLAMA_LIKE, num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=2), [1, 2]),
    "deepseek_v3-first_k_dense_replace": (lambda: tf.DeepseekV3Config(
        **{**LLAMA_LIKE, "num_key_value_heads": 4}, **ROUTED, num_hidden_layers=5, first_k_dense_replace=2,
        q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8), [1]),
    "glm4_moe-first_k_dense_replace": (lambda: tf.Glm4MoeConfig(
        **LLAMA_LIKE, **ROUTED, num_hidden_layers=5, head_dim=8, first_k_dense_replace=2), [0, 3]),
    "llama4-moe_layers": (lambda: tf.Llama4TextConfig(
        **LLAMA_LIKE, num_hidden_layers=5, head_dim=8, intermediate_size_mlp=64, num_local_experts=2,
        interleave_moe_layer_step=2, no_rope_layer_interval=2), [1]),
    "recurrent_gemma-block_types": (lambda: tf.RecurrentGemmaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=7, lru_width=32, attention_window_size=8), [1]),
    # the inverse layer scale is fixed at init from the layer index
    "gpt2-scale_attn_by_inverse_layer_idx": (lambda: tf.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=64, scale_attn_by_inverse_layer_idx=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), [0, 2]),
    "gpt_neo": (lambda: tf.GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4, window_size=4, max_position_embeddings=64,
        attention_types=[[["global", "local"], 2]]), [1]),
    "falcon": (lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                       num_attention_heads=4), [1, 2]),
    "bloom": (lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=4, n_head=4), [1, 2]),
    "gemma3-conditional-generation": (gemma3_multimodal, [1, 2]),
    # three end-of-sequence ids on a three-block model: not a per-layer list
    "llama-eos_token_id-list": (lambda: tf.LlamaConfig(
        **{**LLAMA_LIKE, "eos_token_id": [2, 5, 7]}, num_hidden_layers=3), [1]),
}


def build(name: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CASES[name][0]()).eval()


def ids(seed: int = 1, length: int = 12) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def logits(model, tokens):
    return model(input_ids=tokens, use_cache=False).logits


@torch.inference_mode()
def bypassed(model, skip, tokens):
    with BlockSwitch(find_blocks(model).blocks) as switch, switch.state(skip=set(skip)):
        return logits(model, tokens)


def reload(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("name", CASES)
def test_reloaded_checkpoint_equals_dense_with_blocks_bypassed(name, tmp_path):
    """Saved, reloaded with plain transformers: the same logits as the dense model with the blocks bypassed."""
    model = build(name)
    removed = CASES[name][1]
    tokens = ids()
    expected = bypassed(model, removed, tokens)
    assert not torch.allclose(expected, logits(model, tokens), atol=1e-4)
    eos_before = model.config.get_text_config().eos_token_id

    remove_blocks(model, removed)
    torch.testing.assert_close(logits(model, tokens), expected, rtol=1e-5, atol=1e-5)
    out = save_checkpoint(model, None, tmp_path / "out")
    reloaded = reload(out)
    assert len(find_blocks(reloaded).blocks) == len(find_blocks(model).blocks)
    torch.testing.assert_close(logits(reloaded, tokens), expected, rtol=1e-5, atol=1e-5)
    assert reloaded.config.get_text_config().eos_token_id == eos_before


@pytest.mark.parametrize("name", ["gpt_neo", "falcon", "bloom", "gpt2-scale_attn_by_inverse_layer_idx"])
def test_cached_generation_after_removal(name):
    """KV-cache generation on the pruned model in memory (as `bench` runs it) equals generation without it."""
    model = remove_blocks(build(name), CASES[name][1])
    prompt = ids(seed=2)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0,
                    attention_mask=torch.ones_like(prompt))
    with torch.inference_mode():
        cached = model.generate(prompt, use_cache=True, **settings)
        plain = model.generate(prompt, use_cache=False, **settings)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("name", ["gpt_neo", "falcon", "bloom"])
def test_bypass_first_on_blocks_that_return_tuples(name):
    """The first block call of a fresh model may be a bypass: the model still gets what it expects."""
    from sleb import blocks as blocks_module

    # forget what earlier tests learnt about this block class, as in a new process
    getattr(blocks_module, "_TUPLE_OUTPUT", {}).pop(type(find_blocks(build(name)).blocks[0]), None)
    model = build(name)
    tokens = ids()
    got = bypassed(model, [0], tokens)
    physical = logits(remove_blocks(build(name), [0]), tokens)
    torch.testing.assert_close(got, physical, rtol=1e-5, atol=1e-5)


def test_a_config_that_does_not_describe_the_model_is_refused_before_writing(tmp_path):
    """Check before writing: a layer-indexing field set wrong is named, and nothing is written."""
    model = remove_blocks(build("qwen2_moe-mlp_only_layers"), [1])
    model.config.mlp_only_layers = [2]
    with pytest.raises(SlebError, match="mlp_only_layers"):
        save_checkpoint(model, None, tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_that_does_not_reload_the_same_is_not_kept(tmp_path):
    """Verify after writing: a pruned model that is not the dense one with its blocks bypassed is refused."""
    from sleb.verify import Verifier

    model = build("mixtral")
    verifier = Verifier(model, [1])
    remove_blocks(model, [1])
    with torch.no_grad():
        find_blocks(model).blocks[1].self_attn.o_proj.weight.mul_(1.5)  # in-memory surgery gone wrong
    with pytest.raises(SlebError, match="does not reproduce"):
        save_checkpoint(model, None, tmp_path / "out", {"format": "sleb/1"}, verifier=verifier)
    assert not list(tmp_path.iterdir())

    good = build("mixtral")
    verifier = Verifier(good, [1])
    remove_blocks(good, [1])
    save_checkpoint(good, None, tmp_path / "ok", {"format": "sleb/1"}, verifier=verifier)
    record = json.loads((tmp_path / "ok" / "sleb.json").read_text())
    assert record["verification"]["reload"] == "passed" and record["verification"]["config_check"] == "passed"
    assert record["verification"]["max_abs_logit_diff"] <= record["verification"]["tolerance"]


def test_verify_saved_removes_a_folder_that_differs(tmp_path):
    """The zoo's check of a folder already written: a mismatch deletes it."""
    from sleb.verify import verify_saved

    dense = build("llama-eos_token_id-list")
    save_checkpoint(remove_blocks(build("llama-eos_token_id-list"), [1]), None, tmp_path / "a")
    assert verify_saved(tmp_path / "a", dense, [1])["reload"] == "passed"
    with pytest.raises(SlebError):
        verify_saved(tmp_path / "a", dense, [2])
    assert not (tmp_path / "a").exists()


def test_per_layer_input_embeddings_sized_by_the_layer_count_are_refused_before_writing(tmp_path):
    """Gemma-4's per-layer input table has one slice per block: a plain config cannot describe the cut model."""
    torch.manual_seed(0)
    config = tf.Gemma4TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=16, max_position_embeddings=128,
        vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8, num_kv_shared_layers=0,
        layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=16,
    )
    model = tf.Gemma4ForCausalLM(config).eval()
    remove_blocks(model, [1])
    with pytest.raises(SlebError, match=r"embed_tokens_per_layer.*Nothing was written"):
        save_checkpoint(model, None, tmp_path / "out", {"format": "test"})
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
