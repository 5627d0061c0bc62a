"""The zoo as the demo sees it: the variants `zoo/manifest.yaml` lists, and the removal orders they publish.

The manifest (see zoo/manifest.yaml) names an `org` and `bases`, each with a `model`, an
optional `fallback` (e.g. `default`, the embedded copy), `ratios` and settings that
override `defaults`; each base gives one variant per ratio, `<org>/<name>-<method>-<percent>`,
and with `heal: {enabled: true}` a healed one beside it, `...-<percent>-healed`.
A variant's `sleb.json` holds the base's whole removal order with each round's score; the
demo reads it from a local build folder (`SLEB_ZOO_DIR`, else `build/zoo` in the project)
or from the variant's Hub repository (only when the Hub answered the one quick probe of
`online.hub_online`), and falls back to its own search when neither has it. Orders shipped
in `sleb/orders/` come before both (see `engine`).
A missing manifest is an empty zoo.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import SlebError
from ..files import RECORD_FILE, record_path
from ..loading import DEFAULT_BASE_ID, DEFAULT_MODEL
from ..names import variant_name
from ..prune import DEFAULT_METHOD, recorded_method
from ..search import SearchResult
from .online import hub_online

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MISS_TTL_S = 900  # a variant not found is looked up again after this long (it may be published meanwhile)


@dataclass
class ZooVariant:
    """One published variant: its repo, the base it prunes, what to load for that base, method and ratio."""

    name: str
    repo: str
    base_model: str  # the Hub id the variant comes from
    model: str  # what the zoo loads for the base
    fallback: str | None
    method: str
    ratio: float
    requires_gpu: bool = False
    healed: bool = False  # the pruned model healed (`sleb.healing`): the app shows it in the healed column

    @property
    def label(self) -> str:
        healed = ", healed" if self.healed else ""
        return f"zoo: {self.repo} ({self.method}, {self.ratio:.0%} of blocks removed{healed})"


def load_zoo(path: str | os.PathLike | None) -> list[ZooVariant]:
    """The variants listed in the manifest; [] when it does not exist or cannot be read."""
    if not path or not Path(path).is_file():
        return []
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        defaults = data.get("defaults") or {}
        variants = []
        for base in data.get("bases") or []:
            method = recorded_method(base.get("method") or defaults.get("method") or DEFAULT_METHOD,
                                     base.get("refine", defaults.get("refine")))  # the zoo's defaults
            model = str(base["model"])
            base_model = base.get("base_model") or (DEFAULT_BASE_ID if model == DEFAULT_MODEL else model)
            heal = {**(defaults.get("heal") or {}), **(base.get("heal") or {})}
            for ratio in base.get("ratios") or []:
                for healed in (False, True) if heal.get("enabled") else (False,):
                    name = variant_name(base["name"], method, float(ratio), healed=healed)
                    variants.append(ZooVariant(
                        name=name, repo=f"{data['org']}/{name}", base_model=str(base_model), model=model,
                        fallback=base.get("fallback"), method=method, ratio=float(ratio),
                        requires_gpu=bool(base.get("requires_gpu", defaults.get("requires_gpu", False))),
                        healed=healed))
        return variants
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError, SlebError) as exc:
        log.warning("Ignoring the zoo manifest %s: it cannot be read (%s: %s)", path, type(exc).__name__, exc)
        return []


def zoo_repos(path: str | os.PathLike | None, include_gpu: bool = False) -> list[str]:
    """Hub repos for a Space card's `models:`: the base models and variants (CPU ones unless asked); else SmolLM2."""
    repos: list[str] = []
    for v in load_zoo(path):
        if include_gpu or not v.requires_gpu:
            repos += [r for r in (v.base_model, v.repo) if r not in repos]
    return repos or [DEFAULT_BASE_ID]


def zoo_dir() -> Path:
    return Path(os.environ.get("SLEB_ZOO_DIR") or ROOT / "build" / "zoo")


class ZooOrders:
    """Removal orders published by the zoo, read once per variant (a miss is retried after a while)."""

    def __init__(self):
        self._found: dict[str, tuple[float, SearchResult | None]] = {}

    def result(self, variant: ZooVariant) -> SearchResult | None:
        hit = self._found.get(variant.repo)
        if hit and (hit[1] is not None or time.monotonic() - hit[0] < MISS_TTL_S):
            return hit[1]
        record = self._record(variant)
        result = None
        if record and isinstance(record.get("search"), dict):
            try:
                result = SearchResult.from_dict(record["search"])
                result.settings = {**result.settings, "source": f"zoo: {variant.repo}"}
            except (TypeError, KeyError) as exc:
                log.warning("The zoo's sleb.json of %s is not a search record: %s", variant.repo, exc)
        self._found[variant.repo] = (time.monotonic(), result)
        return result

    @staticmethod
    def _record(variant: ZooVariant) -> dict | None:
        local = record_path(zoo_dir() / variant.name)
        if local.is_file():
            return json.loads(local.read_text())
        from huggingface_hub import constants, hf_hub_download

        if not hub_online() or constants.is_offline_mode():
            return None
        try:
            return json.loads(Path(hf_hub_download(variant.repo, RECORD_FILE)).read_text())
        except Exception as exc:  # not published yet, or the Hub is unreachable: the demo searches itself
            log.info("No zoo order from %s (%s)", variant.repo, type(exc).__name__)
            return None
