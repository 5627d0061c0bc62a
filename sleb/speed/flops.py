"""FLOPs counted from a model's parameters: the "ideal" speedup that a measured one is compared with.

The ideal speedup is the ratio of the FLOPs each model does for the same work, counted from
its parameters: 2 x (matmul weights of the blocks + output head, vocab x hidden, counted even
when tied to the embedding + any other matmul outside the blocks) per token, the embedding
lookup counted as free, plus attention's sequence-length term, 4 x (heads x head_dim) x keys
per token and block (scores and weighted sum; causal, so a prompt's position i sees i + 1
keys). The prefill counts the head once (only the last position's logits are computed), decode
once per token. `ideal_speedup_params` is the plain parameter ratio (no attention term, head
per token) for reference. Each measured speedup is reported beside its ideal, with
`fidelity_* = measured / ideal`.
"""

from __future__ import annotations

from torch import nn

from ..blocks import find_blocks, text_config


def matmul_params(model: nn.Module) -> dict:
    """Weights that cost a multiply-add per token: blocks, output head, other matmuls; and attention width.

    A weight counts when it is a parameter of two or more dimensions outside any `nn.Embedding`
    (lookups are free). The head is `vocab x hidden` even when tied to the input embedding.
    """
    layout = find_blocks(model)
    blocks = sum(p.numel() for p in layout.blocks.parameters() if p.dim() >= 2)
    head_module = model.get_output_embeddings()
    head_weight = getattr(head_module, "weight", None)
    if head_weight is None:
        head_weight = model.get_input_embeddings().weight
    in_blocks = {id(p) for p in layout.blocks.parameters()}
    skip = {id(head_weight), id(model.get_input_embeddings().weight)} | in_blocks
    other = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for p in module.parameters(recurse=False):
            if p.dim() >= 2 and id(p) not in skip:
                other += p.numel()
                skip.add(id(p))
    config = text_config(model)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    width = heads * head_dim if heads and head_dim else (hidden or 0)
    return {"blocks": blocks, "head": head_weight.numel(), "other": other, "num_blocks": len(layout.blocks),
            "attention_width": int(width)}


def _attention_flops(counts: dict, keys: int) -> int:
    """Scores and weighted sum of one token attending to `keys` positions, over all blocks."""
    return 4 * counts["num_blocks"] * counts["attention_width"] * keys


def prefill_flops(counts: dict, prompt_len: int, head_tokens: int = 1) -> int:
    """FLOPs of one prompt's prefill; the head runs on `head_tokens` positions (1 = last only)."""
    linear = 2 * (counts["blocks"] + counts["other"]) * prompt_len + 2 * counts["head"] * head_tokens
    return linear + _attention_flops(counts, prompt_len * (prompt_len + 1) // 2)


def decode_flops(counts: dict, prompt_len: int, steps: int) -> int:
    """FLOPs of `steps` one-token decode steps of one sequence after a `prompt_len` prefill."""
    per_token = 2 * (counts["blocks"] + counts["other"] + counts["head"])
    keys = sum(prompt_len + k for k in range(1, steps + 1))
    return per_token * steps + _attention_flops(counts, keys)


def params_flops_per_token(counts: dict) -> int:
    """2 x (blocks + other + head) matmul weights: FLOPs per token without the attention term."""
    return 2 * (counts["blocks"] + counts["other"] + counts["head"])


def gguf_matmul_params(path) -> dict:
    """`matmul_params` of a GGUF file, from its tensor shapes and metadata alone (no weights read).

    A tensor of two or more dimensions costs a multiply-add per token: `blk.N.*` ones count as
    blocks, `output.weight` as the head (`token_embd.weight` when the head is tied to it), the
    rest as other; the embedding lookup is free. The attention width is heads x key length.
    """
    from ..gguf import open_gguf

    src = open_gguf(path)
    parts = {"blocks": 0, "head": 0, "other": 0}
    embedding = 0
    for tensor in src.reader.tensors:
        if len(tensor.shape) < 2:
            continue
        n = int(tensor.n_elements)
        if src.block_of(tensor.name) is not None:
            parts["blocks"] += n
        elif tensor.name == "output.weight":
            parts["head"] = n
        elif tensor.name == "token_embd.weight":
            embedding = n
        else:
            parts["other"] += n
    parts["head"] = parts["head"] or embedding
    heads = src.value(f"{src.arch}.attention.head_count") or 0
    heads = max(heads) if isinstance(heads, list) else int(heads)  # per-layer counts: the widest
    head_dim = src.value(f"{src.arch}.attention.key_length") or (
        int(src.value(f"{src.arch}.embedding_length") or 0) // heads if heads else 0)
    return {**parts, "num_blocks": src.block_count, "attention_width": int(heads * head_dim)}
