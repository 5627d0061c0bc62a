"""Block finding, removal, checkpoint round-trip, cached generation and search across model families.

Every family is a tiny random model built from its config class. Families with per-layer
attention types get a mixed `layer_types` list and a sliding window shorter than the test
sequences, so a block that kept the wrong type (or a cache layer of the wrong kind) would
change the logits.
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from sleb.blocks import BlockSwitch, find_blocks
from sleb.errors import SlebError
from sleb.removal import remove_blocks, save_checkpoint
from sleb.search import fast_search, reference_search

log = logging.getLogger(__name__)

VOCAB = 128
LAYERS = 5
WINDOW = 8  # sliding window, shorter than SEQ
SEQ = 24
REMOVED = [1, 2]
KEPT = [i for i in range(LAYERS) if i not in REMOVED]
# Removing blocks 1 and 2 keeps [S, S, F]; a list truncated instead of sliced would read [S, F, S].
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
LLAMA_LIKE = {
    "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": LAYERS,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, **TOKENS,
}
GEMMA_LIKE = {**LLAMA_LIKE, "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": WINDOW, "layer_types": MIXED}

FAMILIES = {
    "llama": lambda: LlamaConfig(**LLAMA_LIKE),
    "mistral": lambda: MistralConfig(**LLAMA_LIKE, sliding_window=WINDOW),
    "qwen2": lambda: Qwen2Config(**LLAMA_LIKE, use_sliding_window=True, sliding_window=WINDOW, layer_types=MIXED),
    "qwen3": lambda: Qwen3Config(
        **LLAMA_LIKE, head_dim=8, use_sliding_window=True, sliding_window=WINDOW, layer_types=MIXED
    ),
    "gemma2": lambda: Gemma2Config(**GEMMA_LIKE),
    "gemma3": lambda: Gemma3TextConfig(**GEMMA_LIKE),
    "phi3": lambda: Phi3Config(**LLAMA_LIKE, sliding_window=WINDOW),
    "opt": lambda: OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=LAYERS, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, **TOKENS,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **TOKENS,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
        max_position_embeddings=64, **TOKENS,
    ),
}
# Families whose config carries per-layer attention types that removal must slice.
MIXED_TYPES = {"qwen2", "qwen3", "gemma2", "gemma3"}
SEARCH_FAMILIES = ["llama", "gemma2", "gpt2", "opt", "qwen2"]


def build(family: str, seed: int = 0):
    """A tiny random model of the family, in eval mode."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()


def inputs(seed: int = 1, batch: int = 2, length: int = SEQ) -> torch.Tensor:
    """Random token ids that avoid the special tokens."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def per_layer_lists(config, n: int) -> dict[str, list]:
    """Config entries that are lists with one item per layer."""
    return {k: list(v) for k, v in vars(config).items()
            if isinstance(v, (list, tuple)) and len(v) == n and k != "architectures" and not k.startswith("_")}


@torch.inference_mode()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_find_blocks(family):
    """The block list is found from the module tree and has num_hidden_layers entries."""
    model = build(family)
    layout = find_blocks(model)
    assert len(layout.blocks) == model.config.num_hidden_layers == LAYERS
    assert layout.blocks is model.get_submodule(layout.path)
    if family in MIXED_TYPES:
        assert model.config.layer_types == MIXED


@pytest.mark.parametrize("family", FAMILIES)
def test_removal_round_trip(family, tmp_path):
    """Pruned == dense with the blocks bypassed == reloaded checkpoint; per-layer lists are sliced."""
    model = build(family)
    ids = inputs()
    before = per_layer_lists(model.config, LAYERS)
    if family in MIXED_TYPES:
        assert before["layer_types"] == MIXED
    dense = logits(model, ids)
    with BlockSwitch(find_blocks(model).blocks) as sw, sw.state(skip=set(REMOVED)):
        bypassed = logits(model, ids)
    assert not torch.allclose(dense, bypassed, atol=1e-3), "bypassing blocks should change the logits"

    remove_blocks(model, REMOVED)
    pruned = logits(model, ids)
    torch.testing.assert_close(pruned, bypassed, rtol=0, atol=1e-5)
    assert model.config.num_hidden_layers == len(KEPT)
    assert len(find_blocks(model).blocks) == len(KEPT)
    for new_index, block in enumerate(find_blocks(model).blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                assert module.layer_idx == new_index
    expected_lists = {k: [v[i] for i in KEPT] for k, v in before.items()}
    assert per_layer_lists(model.config, len(KEPT)) == expected_lists

    out = save_checkpoint(model, None, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == len(KEPT)
    assert len(find_blocks(reloaded).blocks) == len(KEPT)
    assert per_layer_lists(reloaded.config, len(KEPT)) == expected_lists
    assert torch.equal(logits(reloaded, ids), pruned)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_cache_after_removal(family):
    """Greedy generation with the KV cache equals generation without it on the pruned model."""
    model = remove_blocks(build(family), REMOVED)
    ids = inputs(seed=2)
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=2,
                    attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        cached = model.generate(ids, use_cache=True, **settings)
        plain = model.generate(ids, use_cache=False, **settings)
    assert cached.shape == (ids.shape[0], SEQ + 8)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("family", SEARCH_FAMILIES)
def test_fast_search_matches_reference(family):
    """Prefix reuse and bounded scoring pick the same blocks with the same scores as the plain loop."""
    model = build(family)
    windows = torch.randint(0, VOCAB, (6, SEQ), generator=torch.Generator().manual_seed(3))
    fast = fast_search(model, windows, num_remove=2, batch_size=2, progress=False)
    ref = reference_search(model, windows, num_remove=2, batch_size=2, progress=False)
    assert fast.order == ref.order
    assert len(set(fast.order)) == 2
    for f, r in zip(fast.rounds, ref.rounds, strict=True):
        for c, score in f["scores"].items():
            assert score == pytest.approx(r["scores"][c], rel=1e-5)
        for c, partial in f["dropped"].items():
            assert partial <= r["scores"][c] * (1 + 1e-5)
            assert partial > f["score"]


def test_blocks_not_found_names_what_was_looked_for():
    """A config layer count that matches no ModuleList is a SlebError that says what it looked for."""
    model = build("llama")
    model.config.num_hidden_layers = 7
    with pytest.raises(SlebError, match=r"ModuleList of 7 modules.*num_hidden_layers=7") as info:
        find_blocks(model)
    assert "layers (len 5)" in str(info.value)
    with pytest.raises(SlebError):
        remove_blocks(model, [1])
