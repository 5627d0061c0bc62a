"""Tiny llama-architecture GGUF files written straight from numpy weights with gguf-py's own writer.

Each block's weights come from a generator seeded by the block's index, so a file holding only
some blocks (`blocks=[0, 2, 3]`) is an independent construction of what removing the others
from the full file must give: the oracle for the GGUF writer's tensor bytes and metadata.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

HIDDEN, HEADS, KV_HEADS, VOCAB = 64, 4, 2, 128
QTYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16, "q8_0": GGMLQuantizationType.Q8_0}


def _add(writer: GGUFWriter, name: str, array: np.ndarray, qtype: str) -> None:
    """2-D weights in `qtype`, 1-D norms in f32 (as llama.cpp's converter does)."""
    if array.ndim == 1 or qtype == "f32":
        writer.add_tensor(name, array.astype(np.float32))
    elif qtype == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        kind = QTYPES[qtype]
        writer.add_tensor(name, quantize(array.astype(np.float32), kind), raw_dtype=kind)


def _block(index: int, ff: int, kv: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + index)
    head = HIDDEN // HEADS

    def w(rows, cols):
        return rng.normal(0, 0.08, (rows, cols))

    return {
        "attn_norm": 1 + rng.normal(0, 0.1, HIDDEN), "attn_q": w(HIDDEN, HIDDEN), "attn_k": w(kv * head, HIDDEN),
        "attn_v": w(kv * head, HIDDEN), "attn_output": w(HIDDEN, HIDDEN),
        "ffn_norm": 1 + rng.normal(0, 0.1, HIDDEN), "ffn_gate": w(ff, HIDDEN), "ffn_up": w(ff, HIDDEN),
        "ffn_down": w(HIDDEN, ff),
    }


def write_tiny_gguf(path, num_blocks: int = 4, qtype: str = "f32", ff=96, kv_heads=None, blocks=None,
                    extra: dict | None = None) -> None:
    """A llama GGUF of `num_blocks` blocks; `ff`/`kv_heads` an int (scalar key) or a per-block list (array key).

    `blocks` (original indices) writes only those blocks, renumbered, with per-block lists sliced;
    `extra` adds metadata keys (`{key: (value, GGUFValueType)}`).
    """
    given = blocks
    blocks = list(range(num_blocks)) if blocks is None else list(blocks)
    ffs = ff if isinstance(ff, list) else [ff] * num_blocks
    kvs = kv_heads if isinstance(kv_heads, list) else [kv_heads or KV_HEADS] * num_blocks

    def per_block(value):  # a list as given for the whole file, else sliced to `blocks`
        return value if not isinstance(value, list) or given is None else [value[i] for i in blocks]

    writer = GGUFWriter(path, "llama")
    writer.add_name("tiny")
    writer.add_block_count(len(blocks))
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(per_block(ff))
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(per_block(kv_heads or KV_HEADS))
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("no_vocab")
    for key, (value, vtype) in (extra or {}).items():
        writer.add_key_value(key, value, vtype)
    rng = np.random.default_rng(7)
    _add(writer, "token_embd.weight", rng.normal(0, 0.5, (VOCAB, HIDDEN)), qtype)
    for new, old in enumerate(blocks):
        for name, array in _block(old, ffs[old], kvs[old] if old < len(kvs) else KV_HEADS).items():
            _add(writer, f"blk.{new}.{name}.weight", array, qtype)
    _add(writer, "output_norm.weight", 1 + rng.normal(0, 0.1, HIDDEN), qtype)
    _add(writer, "output.weight", rng.normal(0, 0.1, (VOCAB, HIDDEN)), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_openelm(path, heads: list[int], kv_heads: list[int], ffs: list[int], blocks=None,
                       unsliced: bool = False) -> None:
    """An OpenELM GGUF (llama.cpp reads its head counts and feed-forward lengths per layer) with those per-block
    lists; `blocks` writes only those blocks, with the lists sliced unless `unsliced`."""
    blocks = list(range(len(heads))) if blocks is None else list(blocks)
    listed = list(range(len(heads))) if unsliced else blocks
    head = 16
    writer = GGUFWriter(path, "openelm")
    writer.add_block_count(len(blocks))
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_head_count([heads[i] for i in listed])
    writer.add_head_count_kv([kv_heads[i] for i in listed])
    writer.add_feed_forward_length([ffs[i] for i in listed])
    writer.add_key_length(head)
    writer.add_value_length(head)
    writer.add_rope_dimension_count(head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(VOCAB)
    writer.add_tokenizer_model("no_vocab")
    rng = np.random.default_rng(11)
    writer.add_tensor("token_embd.weight", rng.normal(0, 0.5, (VOCAB, HIDDEN)).astype(np.float32))
    for new, old in enumerate(blocks):
        r = np.random.default_rng(2000 + old)
        qkv = (heads[old] + 2 * kv_heads[old]) * head
        shapes = {"attn_norm": (HIDDEN,), "attn_qkv": (qkv, HIDDEN), "attn_q_norm": (head,), "attn_k_norm": (head,),
                  "attn_output": (HIDDEN, heads[old] * head), "ffn_norm": (HIDDEN,), "ffn_gate": (ffs[old], HIDDEN),
                  "ffn_up": (ffs[old], HIDDEN), "ffn_down": (HIDDEN, ffs[old])}
        for name, shape in shapes.items():
            array = 1 + r.normal(0, 0.1, shape) if len(shape) == 1 else r.normal(0, 0.08, shape)
            writer.add_tensor(f"blk.{new}.{name}.weight", array.astype(np.float32))
    writer.add_tensor("output_norm.weight", (1 + rng.normal(0, 0.1, HIDDEN)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
