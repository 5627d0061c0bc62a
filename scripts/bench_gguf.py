"""Benchmark: SmolLM2's Q4_1 GGUF pruned at 20% without requantising, checked against its source.

    python scripts/bench_gguf.py                    # shipped SLEB order, 8 WikiText-2 windows of 512 tokens
    python scripts/bench_gguf.py --ratio 0.3 --seqlen 1024

Prints: dense and pruned file sizes, the removed blocks' tensor bytes, whether every kept
tensor's bytes and type equal the source's (read with gguf's own reader), and perplexity
on the same WikiText-2 token ids from transformers (the pruned GGUF dequantized by its own
GGUF loader) and from llama.cpp (when `llama_cpp` is installed), dense and pruned.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from gguf import GGUFReader

from sleb.evaluation.perplexity import perplexity
from sleb.gguf import write_pruned_gguf
from sleb.gguf.verify import llamacpp_available, llamacpp_perplexity, wikitext_windows
from sleb.loading import DEFAULT_BASE_ID, default_gguf
from sleb.orders import find_order
from sleb.prune import blocks_for_ratio

log = logging.getLogger("bench_gguf")


def kept_tensors_equal(source: Path, pruned: Path, keep: list[int]) -> tuple[bool, int]:
    """Whether every tensor of `pruned` has the bytes and type of its source tensor; and how many were compared."""
    original = {t.name: t for t in GGUFReader(source).tensors}
    compared = 0
    for tensor in GGUFReader(pruned).tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            parts[1] = str(keep[int(parts[1])])
        src = original[".".join(parts)]
        if src.tensor_type != tensor.tensor_type or src.data.tobytes() != tensor.data.tobytes():
            return False, compared
        compared += 1
    return True, compared


def transformers_perplexity(path: Path, windows: torch.Tensor) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return perplexity(model, windows)["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers import AutoTokenizer

    source = default_gguf()
    reader = GGUFReader(source)
    total = int(reader.fields["llama.block_count"].contents())
    removed = sorted(find_order(DEFAULT_BASE_ID, "sleb", total).removed(blocks_for_ratio(total, args.ratio)))
    keep = [i for i in range(total) if i not in removed]
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    windows = wikitext_windows(tokenizer, args.windows, args.seqlen)
    with tempfile.TemporaryDirectory() as tmp:
        pruned = Path(tmp) / f"{source.stem}-{len(keep)}of{total}.gguf"
        start = time.perf_counter()
        record = write_pruned_gguf(source, removed, pruned, progress=False)
        write_s = time.perf_counter() - start
        equal, compared = kept_tensors_equal(source, pruned, keep)
        figures = {**{k: record[k] for k in ("bytes_dense", "bytes", "removed_tensor_bytes", "tensors_dense",
                                               "tensors", "metadata_changed")},
                   "removed": removed, "write_s": round(write_s, 2),
                   "header_bytes_saved": record["bytes_dense"] - record["removed_tensor_bytes"] - record["bytes"],
                   "kept_tensors_equal_source": equal, "kept_tensors_compared": compared,
                   "ppl_windows": int(windows.shape[0]), "ppl_seqlen": int(windows.shape[1])}
        for name, path in (("dense", source), ("pruned", pruned)):
            figures[f"ppl_transformers_{name}"] = transformers_perplexity(path, windows)
            if llamacpp_available():
                figures[f"ppl_llamacpp_{name}"] = llamacpp_perplexity(path, windows, threads=args.threads)
                figures[f"ppl_rel_diff_{name}"] = abs(figures[f"ppl_llamacpp_{name}"]
                                                      / figures[f"ppl_transformers_{name}"] - 1)
    figures.update(llamacpp=llamacpp_available(), threads=args.threads, cpu=platform.processor() or platform.machine(),
                   cores=os.cpu_count())
    print(f"removed blocks {removed} ({len(removed)} of {total})")
    print(f"file: dense {figures['bytes_dense']:,} B, pruned {figures['bytes']:,} B; removed blocks' tensors "
          f"{figures['removed_tensor_bytes']:,} B; dense - removed - pruned = {figures['header_bytes_saved']:,} B "
          "(tensor infos of the removed tensors)")
    print(f"kept tensors equal to the source (bytes and type): {equal} ({compared} compared)")
    for name in ("dense", "pruned"):
        line = f"{name}: transformers perplexity {figures[f'ppl_transformers_{name}']:.3f}"
        if f"ppl_llamacpp_{name}" in figures:
            line += (f", llama.cpp {figures[f'ppl_llamacpp_{name}']:.3f} "
                     f"({100 * figures[f'ppl_rel_diff_{name}']:.2f}% apart)")
        print(line + f" on {windows.shape[0]} x {windows.shape[1]} WikiText-2 tokens")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
