"""Text sources for calibration and evaluation, from local files or the Hugging Face Hub.

Local copies live in a data folder (`--data-dir`, `SLEB_DATA_DIR`, else `../shared/data`
beside the project). Named sources use the local copy when it is there and
`datasets.load_dataset` otherwise; both give a list of documents (strings).

The local C4 sample is split once, here: rows [0, 1100) are for evaluation (the
paper evaluates on the first 1,100 C4 validation documents), rows [1100, end) for
calibration, so the two never share a document.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SlebError

log = logging.getLogger(__name__)

C4_EVAL_ROWS = 1100
LOCAL_FILES = {
    "wikitext2-test": "wikitext-2-raw/wiki.test.rows.jsonl",  # the Hub's 4,358 test rows, empty ones included
    "c4": "c4-sample/c4_sample.jsonl",
}
HUB_SETS = {
    "wikitext2-train": ("wikitext", "wikitext-2-raw-v1", "train", None),
    "wikitext2-test": ("wikitext", "wikitext-2-raw-v1", "test", None),
    "c4-train": ("allenai/c4", None, "train", {"train": "en/c4-train.00000-of-01024.json.gz"}),
    "c4-validation": ("allenai/c4", None, "validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"}),
}
CALIBRATION_SOURCES = ("c4", "wikitext2")


def data_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    if os.environ.get("SLEB_DATA_DIR"):
        return Path(os.environ["SLEB_DATA_DIR"])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Documents:
    """Documents plus a description of exactly where they came from."""

    texts: list[str]
    source: str  # e.g. "local:/path/c4_sample.jsonl[1100:1480]" or "hub:wikitext/wikitext-2-raw-v1:train"


def read_text_file(path: str | os.PathLike, rows: slice | None = None) -> Documents:
    """A .jsonl file (one `{"text": ...}` per line, empty texts kept) or plain text (one document per line)."""
    path = Path(path)
    if not path.is_file():
        raise SlebError(f"Data file {path} does not exist.")
    content = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        try:
            texts = [json.loads(line)["text"] for line in content.split("\n") if line.strip()]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SlebError(f"{path} must hold one JSON object with a \"text\" field per line: {exc}") from exc
    else:
        texts = [line for line in content.splitlines() if line.strip()]
    rows = rows or slice(None)
    start, stop, _ = rows.indices(len(texts))
    return Documents(texts[rows], f"local:{_display(path)}[{start}:{stop}]")


def _display(path: Path) -> str:
    """A path relative to the data folder when inside it, so records do not carry machine paths."""
    try:
        return str(path.resolve().relative_to(data_dir().resolve()))
    except ValueError:
        return str(path)


def hub_documents(name: str) -> Documents:
    try:
        import datasets

        repo, config, split, files = HUB_SETS[name]
        ds = datasets.load_dataset(repo, config, split=split, data_files=files)
    except Exception as exc:
        raise SlebError(
            f"Could not load {name} from the Hugging Face Hub ({type(exc).__name__}: {exc}). Offline, put the "
            f"local data folder in place (--data-dir or SLEB_DATA_DIR; expected {data_dir()}) or pass a "
            ".txt/.jsonl file."
        ) from exc
    return Documents(list(ds["text"]), f"hub:{repo}{'/' + config if config else ''}:{split}")


def calibration_documents(source: str, data_root: str | os.PathLike | None = None) -> Documents:
    """Calibration text: `c4`, `wikitext2` (train split; Hub only) or a file path."""
    root = data_dir(data_root)
    if source == "c4":
        local = root / LOCAL_FILES["c4"]
        if local.is_file():
            return read_text_file(local, slice(C4_EVAL_ROWS, None))
        return hub_documents("c4-train")
    if source == "wikitext2":
        return hub_documents("wikitext2-train")
    if Path(source).suffix in (".txt", ".jsonl", ".raw") or Path(source).exists():
        return read_text_file(source)
    raise SlebError(
        f"Unknown calibration source {source!r}; use one of {', '.join(CALIBRATION_SOURCES)} or a .txt/.jsonl file."
    )
