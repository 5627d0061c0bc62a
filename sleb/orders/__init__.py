"""Removal orders that ship with the project: read these before searching or asking the Hub.

Each `<name>-<method>.json` here holds one model's full search record (the `search` dict of
`sleb.json`: order, every round's scores, calibration, dtype, timings) and the command that
produced it; `models.json` holds each model's default method and ratio for the demo, with
the reason. Write them with

    python -m sleb.orders default --methods sleb,block-influence,angular,oneshot-ppl --num-remove 9 \\
        --calib-tokens 2048 --seqlen 128 --dtype bfloat16

(any `sleb search` calibration option works; the search resumes from the sleb cache).
A zoo variant's order is the file of its base and method: `<base name>-<method>.json`;
`zoo/publish.py` writes it (`--orders-dir sleb/orders` to ship it) with the same `write_order`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from ..search import SearchResult

log = logging.getLogger(__name__)

ORDERS_DIR = Path(__file__).resolve().parent
FORMAT = "sleb-order/1"
DEFAULTS_FILE = "models.json"


@dataclass
class ShippedOrder:
    """One shipped removal order: whose, by which method, and the search record."""

    name: str  # file stem's model part, e.g. smollm2-135m-instruct (the zoo's base name)
    base_model: str  # Hub id of the dense model
    method: str
    result: SearchResult
    command: str
    path: Path


def order_name(base_model: str) -> str:
    """The file name's model part: the Hub id's name, lower case (`smollm2-135m-instruct`)."""
    return base_model.rstrip("/").split("/")[-1].lower()


def orders_dir() -> Path:
    """The shipped folder, or `SLEB_ORDERS_DIR` (tests, or orders being tried before they ship)."""
    return Path(os.environ.get("SLEB_ORDERS_DIR") or ORDERS_DIR)


@lru_cache(maxsize=4)
def _read_all(folder: str) -> tuple[ShippedOrder, ...]:
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name == DEFAULTS_FILE:
            continue
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT}")
            result = SearchResult.from_dict(data["search"])
            result.settings = {**result.settings, "source": f"shipped: {path.name}"}
            out.append(ShippedOrder(data["name"], data["base_model"], result.method, result,
                                    data.get("command", ""), path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Ignoring the order file %s: %s", path, exc)
    return tuple(out)


def shipped_orders(folder: str | os.PathLike | None = None) -> list[ShippedOrder]:
    """Every readable order file in the folder (read once per folder)."""
    return list(_read_all(str(folder or orders_dir())))


def orders_of(base_model: str, folder: str | os.PathLike | None = None) -> list[ShippedOrder]:
    """The shipped orders of this model (by Hub id or name), every method."""
    names = {base_model, order_name(base_model)}
    return [order for order in shipped_orders(folder) if names & {order.base_model, order.name}]


def find_order(base_model: str, method: str, num_blocks: int,
               folder: str | os.PathLike | None = None) -> SearchResult | None:
    """The shipped order of `method` for this model (by Hub id or name), if its block count matches."""
    for order in orders_of(base_model, folder):
        if order.method == method and order.result.num_blocks == num_blocks:
            return order.result
    return None


def model_defaults(base_model: str, folder: str | os.PathLike | None = None) -> dict:
    """The demo's default method and ratio for a model, and why (`{}` when `models.json` has none)."""
    path = Path(folder or orders_dir()) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data.get(base_model) or data.get(order_name(base_model)) or {}


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=1) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _read_all.cache_clear()


def write_order(folder: str | os.PathLike, name: str, base_model: str, result: SearchResult, *, model_argument: str,
                dtype: str, command: str) -> Path:
    """Write `<folder>/<name>-<method>.json` (atomically): the search record and how it was made.

    `name` is the file's model part (the zoo's base name, or `order_name(base_model)`),
    `base_model` the dense model's Hub id, `model_argument` what was loaded, `command` what
    reproduces the search.
    """
    from ..prune import versions

    path = Path(folder) / f"{name}-{result.method}.json"
    settings = {k: v for k, v in result.settings.items() if k != "source"}  # where this process read it from
    write_json(path, {
        "format": FORMAT, "name": name, "base_model": base_model, "model_argument": model_argument,
        "method": result.method, "num_blocks": result.num_blocks, "max_remove": result.max_remove, "dtype": dtype,
        "command": command, "versions": versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "search": {**result.to_dict(), "settings": settings}})
    return path
