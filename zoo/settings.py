"""Manifest settings: their defaults, the check of each value, merging, and `--set key=value` overrides."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from sleb.evaluation.heldout import PPL_SETS
from sleb.evaluation.zeroshot import ZEROSHOT_TASKS
from sleb.healing.distill import DistillSpec
from sleb.healing.run import HEAL_METHODS
from sleb.loading import DTYPES
from sleb.prune import DEFAULT_METHOD, PICK_METHODS, recorded_method

from .yamltree import Bad as _Bad
from .yamltree import ManifestError, Node

DEFAULT_SETTINGS: dict[str, Any] = {
    "method": DEFAULT_METHOD,  # sleb+refine: SLEB's greedy, then swap refinement (docs/zoo.md); sleb: the paper's
    "refine": None,  # swap refinement of each ratio's set: null (what the method implies), seed or all
    "dtype": "auto",
    "device": "auto",
    "requires_gpu": False,
    "early_barrier": 1,
    "latter_barrier": 1,
    "calibration": {"source": "c4", "nsamples": 128, "seqlen": 2048, "seed": 0, "tokens": None},
    "eval": {"ppl": ["wikitext2", "c4"], "seqlen": 2048, "max_windows": None, "batch_size": 1,
             "zeroshot": list(ZEROSHOT_TASKS), "zeroshot_limit": None, "zeroshot_batch_size": 1},
    "speed": {"enabled": True, "prompt_len": 256, "decode_batch": 8, "new_tokens": 64, "repeats": 3, "warmup": 1},
    "heal": {"enabled": False, "method": "linear+distill", "source": "c4", "seqlen": 512, "linear_tokens": 16384,
             "tokens": DistillSpec.tokens, "lr": DistillSpec.lr, "lm_weight": DistillSpec.lm_weight,
             "lora_rank": DistillSpec.lora_rank, "dtype": "bf16",
             "seed": 0},
}


def variant_method(settings: dict) -> str:
    """The method a base's variants are recorded and named under: 'sleb+refine', or 'sleb' for the paper's greedy."""
    return recorded_method(settings["method"], settings["refine"])


def _type_name(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _int(low: int, optional: bool = False):
    def check(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _Bad(f"expected a whole number >= {low}{' or null' if optional else ''}, got {value!r}")
        return value

    return check


def _bool(value):
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {value!r}")
    return value


def _choice(options):
    def check(value):
        if value not in options:
            raise _Bad(f"expected one of {', '.join(map(str, options))}; got {value!r}")
        return value

    return check


def _names(known):
    def check(value):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _Bad(f"expected a list of names from {', '.join(known)}; got {value!r}")
        unknown = [v for v in value if v not in known]
        if unknown:
            raise _Bad(f"unknown {', '.join(unknown)}; known: {', '.join(known)}")
        if len(set(value)) != len(value):
            raise _Bad(f"a name is listed twice in {value}")
        return value

    return check


def _number(low: float, inclusive: bool):
    def check(value):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (value < low if inclusive else value <= low)):
            raise _Bad(f"expected a number {'>=' if inclusive else '>'} {low:g}, got {value!r}")
        return float(value)
    return check


def _device(value):
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise _Bad(f"expected auto, cpu, cuda or cuda:N; got {value!r}")
    return value


def _calib_source(value):
    if value in ("c4", "wikitext2"):
        return value
    if isinstance(value, str) and value.endswith((".txt", ".jsonl")):
        if not Path(value).expanduser().is_file():
            raise _Bad(f"calibration file {value} does not exist")
        return value
    raise _Bad(f"expected c4, wikitext2 or a .txt/.jsonl file; got {value!r}")


LEAVES = {
    "method": _choice(PICK_METHODS),
    "refine": _choice((None, "seed", "all")),
    "dtype": _choice(("auto", *DTYPES)),
    "device": _device,
    "requires_gpu": _bool,
    "early_barrier": _int(0),
    "latter_barrier": _int(0),
    "calibration.source": _calib_source,
    "calibration.nsamples": _int(1),
    "calibration.seqlen": _int(2),
    "calibration.seed": _int(0),
    "calibration.tokens": _int(2, optional=True),
    "eval.ppl": _names(tuple(PPL_SETS)),
    "eval.seqlen": _int(2),
    "eval.max_windows": _int(1, optional=True),
    "eval.batch_size": _int(1),
    "eval.zeroshot": _names(ZEROSHOT_TASKS),
    "eval.zeroshot_limit": _int(1, optional=True),
    "eval.zeroshot_batch_size": _int(1),
    "speed.enabled": _bool,
    "speed.prompt_len": _int(1),
    "speed.decode_batch": _int(1),
    "speed.new_tokens": _int(2),
    "speed.repeats": _int(1),
    "speed.warmup": _int(0),
    "heal.enabled": _bool,
    "heal.method": _choice(HEAL_METHODS),
    "heal.source": _calib_source,
    "heal.seqlen": _int(8),
    "heal.linear_tokens": _int(8),
    "heal.tokens": _int(8),
    "heal.lr": _number(0, inclusive=False),
    "heal.lm_weight": _number(0, inclusive=True),
    "heal.lora_rank": _int(1),
    "heal.dtype": _choice(("bf16", "fp32")),
    "heal.seed": _int(0),
}
SECTIONS = ("calibration", "eval", "speed", "heal")


def _unknown_key(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    return f"unknown key {key!r}{hint}"


def _settings(node: Node, where: str, extra=()) -> dict:
    """Validated settings of one mapping (a `defaults:` section or a base); keys in `extra` are left out."""
    out: dict[str, Any] = {}
    top = [k for k in LEAVES if "." not in k] + list(SECTIONS)
    for key, child in node.value.items():
        if key in extra:
            continue
        if key in SECTIONS:
            if not isinstance(child.value, dict):
                raise ManifestError(f"{where}:{child.line}: {key} must be a mapping of settings.")
            section = {}
            known = [k.split(".", 1)[1] for k in LEAVES if k.startswith(key + ".")]
            for sub, leaf in child.value.items():
                if sub not in known:
                    raise ManifestError(f"{where}:{child.key_lines[sub]}: {key}: {_unknown_key(sub, known)}.")
                section[sub] = _leaf(f"{key}.{sub}", leaf, where)
            out[key] = section
        elif key in LEAVES:
            out[key] = _leaf(key, child, where)
        else:
            raise ManifestError(f"{where}:{node.key_lines[key]}: {_unknown_key(key, [*extra, *top])}.")
    return out


def _leaf(key: str, node: Node, where: str):
    value = node.value.copy() if isinstance(node.value, list) else node.value
    if isinstance(value, list):
        value = [item.value for item in value]
    if isinstance(value, dict):
        raise ManifestError(f"{where}:{node.line}: {key}: expected a value, got a mapping.")
    try:
        return LEAVES[key](value)
    except _Bad as exc:
        raise ManifestError(f"{where}:{node.line}: {key}: {exc}.") from None


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` of `--set`: the key is a setting (dotted for sections, e.g. eval.max_windows) or org."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ManifestError(f"--set {text}: expected key=value, for example eval.max_windows=4.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ManifestError(f"--set {text}: the value is not valid YAML ({exc}).") from None
    if key == "org":
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ManifestError(f"--set {text}: org must be a Hub user or organisation name.")
        return key, value
    if key not in LEAVES:
        raise ManifestError(f"--set {text}: {_unknown_key(key, ['org', *LEAVES])}.")
    try:
        return key, LEAVES[key](value)
    except _Bad as exc:
        raise ManifestError(f"--set {text}: {exc}.") from None
