"""`--gguf`: a pruned GGUF beside the pruned checkpoint, written and verified inside its folder.

For a GGUF source the blocks are removed from the source file itself (`write_pruned_gguf`,
no requantisation). For any other source the saved checkpoint is converted with llama.cpp's
own converter (`sleb.gguf.convert`, `--gguf-type`). The file lands in the checkpoint's
temporary folder before that folder is moved into place, so a GGUF that fails verification
takes the whole checkpoint with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SlebError
from .convert import Converter, convert_checkpoint, require_converter
from .verify import PPL_SEQLEN, PPL_WINDOWS, verify_gguf, wikitext_windows
from .write import write_pruned_gguf

log = logging.getLogger(__name__)

# Tolerance class of the logit check per converted type; q4_k_m is checked by llama.cpp's perplexity only.
CONVERTED_DTYPE = {"f16": torch.float16, "q8_0": torch.bfloat16}


@dataclass
class GgufExport:
    """What `--gguf` writes: from the source GGUF (copy) or through llama.cpp's converter, and how it is checked."""

    stem: str
    source: Path | None = None  # the source GGUF, copied without requantising
    converter: Converter | None = None
    gguf_type: str | None = None
    verify: bool = True
    data_dir: str | None = None
    windows: int = PPL_WINDOWS
    seqlen: int = PPL_SEQLEN
    progress: bool = True

    def file_name(self, kept: int, total: int) -> str:
        suffix = f"-{self.gguf_type}" if self.converter else ""
        return f"{self.stem}-{kept}of{total}{suffix}.gguf"


def plan_export(source, heal=None, verify: bool = True, data_dir=None, progress: bool = True,
                gguf_type: str | None = None) -> GgufExport:
    """Check, before any search, that `--gguf` can be honoured for this `sleb.loading.ModelSource`."""
    common = {"verify": verify, "data_dir": data_dir, "progress": progress}
    if source.kind != "gguf":
        gguf_type = gguf_type or "f16"
        converter = require_converter(gguf_type)
        return GgufExport(Path(source.name.rstrip("/")).name, converter=converter, gguf_type=gguf_type, **common)
    if gguf_type is not None:
        raise SlebError(f"--gguf-type {gguf_type} would requantise {source.gguf_file}; from a GGUF source sleb copies "
                        "the kept tensors as they are. Drop --gguf-type.")
    if heal is not None:
        raise SlebError("--gguf with --heal on a GGUF source: healing changes the kept blocks' weights, which a GGUF "
                        "copied from the source cannot hold. Prune the safetensors model with llama.cpp's converter "
                        "(see docs/gguf.md), or drop one of the two.")
    path = Path(source.path) / source.gguf_file
    return GgufExport(path.stem, source=path, **common)


def export_gguf(folder: Path, export: GgufExport, removed: list[int], total: int, verifier=None,
                tokenizer=None) -> dict:
    """Write the pruned GGUF into `folder` (a saved checkpoint) and verify it; the record for `sleb.json`."""
    path = Path(folder) / export.file_name(total - len(removed), total)
    if export.converter is None:
        record = write_pruned_gguf(export.source, removed, path, progress=export.progress)
        dtype = None
    else:
        record = convert_checkpoint(folder, path, export.gguf_type, export.converter)
        dtype = CONVERTED_DTYPE.get(export.gguf_type)
        verifier = verifier if dtype is not None else None
    if not export.verify:
        record["verification"] = "skipped"
        return record
    windows = wikitext_windows(tokenizer, export.windows, export.seqlen, export.data_dir) if tokenizer else None
    record["verification"] = verify_gguf(path, verifier, windows, dtype)
    if export.converter is not None and dtype is None:
        record["verification"]["transformers"] = f"skipped for {export.gguf_type} (checked by llama.cpp's perplexity)"
    return record
