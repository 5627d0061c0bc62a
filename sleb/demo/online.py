"""Is the Hugging Face Hub reachable? Asked once, with a short timeout, and remembered for the process.

Offline, huggingface_hub would otherwise retry every request five times with backoff
(about 23 s per file). When the probe fails, offline mode is switched on for the whole
process (`HF_HUB_OFFLINE=1` and huggingface_hub's constant, which transformers reads too),
so no later request waits for the network.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.5
_TRUE = ("1", "true", "yes", "on")
_state: dict[str, bool] = {}
_lock = threading.Lock()


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _probe(timeout: float) -> bool:
    host, port = _endpoint()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError as exc:
        log.info("The Hugging Face Hub (%s:%d) is unreachable (%s): working offline", host, port, exc)
        return False


def set_offline() -> None:
    """Offline mode for this process: the environment and huggingface_hub's constant (read at every request)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - huggingface_hub is a requirement
        pass


def hub_online(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the Hub can be reached; decided on the first call (a TCP connect), then remembered."""
    with _lock:
        if "online" not in _state:
            if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
                _state["online"] = False
            else:
                _state["online"] = _probe(timeout)
            if not _state["online"]:
                set_offline()
        return _state["online"]


def forget() -> None:
    """Ask again on the next call (tests)."""
    with _lock:
        _state.clear()
