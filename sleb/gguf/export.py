"""`--gguf`: a pruned GGUF beside the pruned checkpoint, written and verified inside its folder.

For a GGUF source the blocks are removed from the source file itself (`write_pruned_gguf`,
no requantisation). The file lands in the checkpoint's temporary folder before that folder
is moved into place, so a GGUF that fails verification takes the whole checkpoint with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlebError
from .verify import PPL_SEQLEN, PPL_WINDOWS, verify_gguf, wikitext_windows
from .write import write_pruned_gguf

log = logging.getLogger(__name__)


@dataclass
class GgufExport:
    """What `--gguf` writes: the source GGUF, and how the written file is checked."""

    source: Path
    verify: bool = True
    data_dir: str | None = None
    windows: int = PPL_WINDOWS
    seqlen: int = PPL_SEQLEN
    progress: bool = True

    def file_name(self, kept: int, total: int) -> str:
        return f"{self.source.stem}-{kept}of{total}.gguf"


def plan_export(source, heal=None, verify: bool = True, data_dir=None, progress: bool = True) -> GgufExport:
    """Check, before any search, that `--gguf` can be honoured for this `sleb.loading.ModelSource`."""
    if source.kind != "gguf":
        raise SlebError(
            f"--gguf needs a GGUF source: {source.name} is a {source.kind} model, and sleb writes GGUF files by "
            "removing blocks from a GGUF without requantising. Prune the GGUF file of this model instead, or "
            "convert the pruned checkpoint with llama.cpp's convert_hf_to_gguf.py."
        )
    if heal is not None:
        raise SlebError("--gguf with --heal: healing changes the kept blocks' weights, which a GGUF copied from "
                        "the source cannot hold without requantising. Drop one of the two.")
    return GgufExport(Path(source.path) / source.gguf_file, verify, data_dir, progress=progress)


def export_gguf(folder: Path, export: GgufExport, removed: list[int], total: int, verifier=None,
                pruned_model=None, tokenizer=None) -> dict:
    """Write the pruned GGUF into `folder` and verify it (see `sleb.gguf.verify`); the record for `sleb.json`."""
    path = Path(folder) / export.file_name(total - len(removed), total)
    record = write_pruned_gguf(export.source, removed, path, progress=export.progress)
    if export.verify and verifier is not None:
        windows = None
        if pruned_model is not None and tokenizer is not None:
            windows = wikitext_windows(tokenizer, export.windows, export.seqlen, export.data_dir)
        record["verification"] = verify_gguf(path, verifier, pruned_model, windows)
    else:
        record["verification"] = "skipped"
    return record
