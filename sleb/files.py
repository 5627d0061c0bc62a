"""The files sleb writes, named in one place: the record beside each checkpoint and the search state."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .loading import cache_dir

RECORD_FILE = "sleb.json"  # beside every checkpoint sleb writes: removal order, calibration, verification, healing


def record_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / RECORD_FILE


def read_record(folder: str | os.PathLike) -> dict:
    """The `sleb.json` record of a checkpoint folder."""
    return json.loads(record_path(folder).read_text())


def is_sleb_checkpoint(folder: str | os.PathLike) -> bool:
    """A finished checkpoint folder written by sleb: its config and its record are both there."""
    return (Path(folder) / "config.json").is_file() and record_path(folder).is_file()


def state_dir() -> Path:
    """Where searches keep their resumable state and finished results (`SLEB_STATE_DIR`, else the sleb cache)."""
    return Path(os.environ.get("SLEB_STATE_DIR") or cache_dir() / "searches")


def search_state_path(method: str, key: str) -> Path:
    """The state file of one search: its method and its key (`sleb.prune.search_key`)."""
    return state_dir() / f"{method}-{key}.json"
