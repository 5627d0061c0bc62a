"""Carry a block removal into the model's config: find the fields that index layers, and remap them.

A config describes its layers in many ways: a per-layer list (`layer_types`), a list of
layer indices (`mlp_only_layers`, `moe_layers`), a dict keyed by layer index, a run-length
or repeating pattern (`attention_types`, `block_types`), a "first k" count
(`first_k_dense_replace`) or an "every n" step (`decoder_sparse_step`, Jamba's periods).
Which fields do so is found from structure, never from names: each field of a suitable
shape is perturbed and the model is built from the config on the meta device; a field
indexes layers when the perturbation changes some blocks and not others. Each such field
is then remapped to the kept blocks, and the pruned config is accepted only when the
model it builds has, block for block, the structure of the blocks that were kept.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SlebError

log = logging.getLogger(__name__)

MAX_SEARCH_BUILDS = 400  # meta builds allowed when a field needs a value search


def layer_count_field(config) -> str:
    """The attribute that stores the layer count (`num_layers`, `n_layer`, ...)."""
    return getattr(config, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")


def index_attributes(blocks) -> set[tuple[str, str]]:
    """(module path inside a block, attribute) that holds the block's own index.

    Such an attribute is an integer equal to the block's index in every block that has it,
    and at least two blocks have it (so that a width that happens to equal one index is not
    taken for one); blocks of other kinds (hybrid models) may lack it.
    """
    values: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for index, block in enumerate(blocks):
        for path, module in block.named_modules():
            for attr, value in vars(module).items():
                if type(value) is int:
                    values.setdefault((path, attr), []).append((index, value))
    return {key for key, seen in values.items() if len(seen) >= 2 and all(i == v for i, v in seen)}


def block_signature(block: nn.Module, skip: set[tuple[str, str]]) -> tuple:
    """What a block is made of: parameter and buffer shapes and the scalar settings of its modules."""
    items = []
    for path, module in block.named_modules():
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("_") or attr == "training" or (path, attr) in skip:
                continue
            if isinstance(value, (bool, int, float, str)):  # None too often marks runtime state set later
                items.append((path, attr, value))
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            items.append((path, name, tuple(tensor.shape)))
    return tuple(items)


def signatures(blocks) -> list[tuple]:
    skip = index_attributes(blocks)
    return [block_signature(block, skip) for block in blocks]


def meta_model(model_class, config) -> nn.Module:
    """The model a config builds, on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return model_class._from_config(config)


def reloaded_config(config):
    """The config as `from_pretrained` would read it back from `config.json`."""
    return type(config).from_dict(config.to_dict())


def built_signatures(model_class, config) -> list[tuple] | None:
    """Block signatures of the model built from `config` as saved and reloaded; None if it does not build."""
    from .blocks import find_blocks

    try:
        return signatures(find_blocks(meta_model(model_class, reloaded_config(config))).blocks)
    except Exception as exc:  # noqa: BLE001 - any config that does not build is simply not a solution
        log.debug("Config does not build: %s", exc)
        return None


# --- field kinds: how a value describes layers, how to perturb it, how to remap it ------------------------


def _is_index(value, n: int) -> bool:
    return type(value) is int and 0 <= value < n


def _run_length(value) -> list | None:
    """Expand `[[items, count], ...]` into one entry per layer, else None."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    out = []
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], (list, tuple))
                and type(item[1]) is int):
            return None
        out.extend(list(item[0]) * item[1])
    return out


def _encode_runs(entries: list) -> list:
    runs: list = []
    for entry in entries:
        if runs and runs[-1][0] == [entry]:
            runs[-1][1] += 1
        else:
            runs.append([[entry], 1])
    return runs


def _key_index(key, n: int) -> int | None:
    if type(key) is int:
        return key if 0 <= key < n else None
    if isinstance(key, str) and key.isdigit() and int(key) < n:
        return int(key)
    return None


@dataclass
class Field:
    """A config field that may index layers, with its perturbation and its remap."""

    name: str
    kind: str
    perturb: Callable[[], object]
    remap: Callable[[list[int]], object]


def candidate_fields(config, n: int, per_layer_by_class: set[str]) -> list[Field]:
    """Fields whose shape lets them index layers: lists, patterns, index lists, layer-keyed dicts, small ints."""
    count_field = layer_count_field(config)
    fields = []
    for name, value in vars(config).items():
        if name.startswith("_") or name == count_field or name in ("architectures", "transformers_version"):
            continue
        field = _field_for(name, value, n, name in per_layer_by_class)
        if field is not None:
            fields.append(field)
    return fields


def _field_for(name: str, value, n: int, per_layer_by_class: bool) -> Field | None:
    if isinstance(value, dict) and value and all(_key_index(k, n) is not None for k in value):
        def remap_dict(keep, value=value):
            out = {}
            for key, item in value.items():
                old = _key_index(key, n)
                if old in keep:
                    new = keep.index(old)
                    out[new if type(key) is int else str(new).zfill(len(key))] = item
            return out
        return Field(name, "keyed", lambda: dict(list(value.items())[1:]), remap_dict)
    if not isinstance(value, (list, tuple)):
        if type(value) is int and 0 <= value <= n:
            return Field(name, "int", lambda: value + 1 if value < n else value - 1,
                         lambda keep: sum(1 for i in keep if i < value))
        return None
    kind = type(value)
    runs = _run_length(value)
    if runs is not None and len(runs) == n:
        return Field(name, "runs", lambda: _encode_runs(runs[1:] + runs[:1]),
                     lambda keep: _encode_runs([runs[i] for i in keep]))
    is_index_list = all(_is_index(v, n) for v in value) and list(value) == sorted(set(value))
    if len(value) == n and not (is_index_list and list(value) == list(range(n))):
        return Field(name, "per-layer", lambda: kind(list(value[1:]) + list(value[:1])),
                     lambda keep: kind(value[i] for i in keep))
    if is_index_list:
        def perturb():
            return kind(i for i in range(n) if i not in value)
        return Field(name, "indices", perturb, lambda keep: kind(keep.index(i) for i in value if i in keep))
    if 0 < len(value) < n and not per_layer_by_class:
        return Field(name, "pattern", lambda: kind(list(value[1:]) + list(value[:1])),
                     lambda keep: kind(value[i % len(value)] for i in keep))
    return None


def per_layer_fields_by_class(config) -> set[str]:
    """Fields that the config class itself sizes by the layer count (defaults built for two counts)."""
    count_field = layer_count_field(config)
    sizes = {}
    for count in (5, 7):
        try:
            built = type(config)(**{count_field: count})
        except Exception:  # noqa: BLE001 - a class that needs more arguments gives no evidence
            return set()
        sizes[count] = {k for k, v in vars(built).items() if isinstance(v, (list, tuple)) and len(v) == count}
    return sizes[5] & sizes[7]


# --- the search ---------------------------------------------------------------------------------------------


def _with(config, target, values: dict):
    new = copy.deepcopy(config)
    sub = _sub(new, target)
    for name, value in values.items():
        setattr(sub, name, value)
    return new


def _sub(config, target):
    """The object inside a (possibly nested) copied config that corresponds to `target` in the original."""
    if hasattr(config, "get_text_config") and config.get_text_config() is not config and target != "root":
        return config.get_text_config()
    return config


def _mismatches(got: list[tuple] | None, want: list[tuple]) -> int:
    if got is None or len(got) != len(want):
        return len(want) + 1
    return sum(g != w for g, w in zip(got, want, strict=True))


def _partition(sigs: list[tuple]) -> list[int]:
    """Which blocks are alike: each block's index of the first block with the same signature."""
    return [sigs.index(sig) for sig in sigs]


_FOUND: dict[tuple[type, str], list[str]] = {}  # (model class, config JSON) -> names of layer fields


def layer_fields(model_class, config, target: str, fields: list[Field], base: list[tuple]) -> list[Field]:
    """The fields that index layers: perturbing them changes which blocks are alike.

    A width (`num_experts`, heads) changes every block of a kind the same way and keeps the
    grouping; a "first k", an "every n", a per-layer list or a list of indices regroups them.
    Remembered per model class and config, so removing from copies of one model probes once.
    """
    key = (model_class, config.to_json_string(use_diff=False))
    if key in _FOUND:
        return [f for f in fields if f.name in _FOUND[key]]
    found = []
    for field in fields:
        got = built_signatures(model_class, _with(config, target, {field.name: field.perturb()}))
        if got is None or len(got) != len(base):
            continue
        if _partition(got) != _partition(base) or (field.kind != "int" and got != base):
            found.append(field)
    _FOUND[key] = [f.name for f in found]
    return found


def remap_config(model_class, config, target: str, keep: list[int], want: list[tuple]) -> dict:
    """Remap the layer-indexing fields of `config` (in place) so that it builds blocks like `want`.

    `config` is the model's top config, `target` says whether the layer fields live in the
    text sub-config ("text") or the top config ("root"). Returns the new values by field.
    Raises SlebError naming the fields when no exact remap is found.
    """
    sub = _sub(config, target)
    count_field = layer_count_field(sub)
    n = getattr(sub, count_field)
    by_class = per_layer_fields_by_class(sub)
    fields = candidate_fields(sub, n, by_class)
    base = built_signatures(model_class, config)
    if base is None:
        raise SlebError(f"{type(config).__name__} does not build a model from itself; cannot check the removal.")
    structural = layer_fields(model_class, config, target, fields, base)
    names = {f.name for f in structural}
    # Per-layer lists sized by the class follow the layers even when the module tree does not show them.
    structural += [f for f in fields if f.kind == "per-layer" and f.name in by_class and f.name not in names]
    # A run-length pattern that spells out a remapped per-layer list (GPT-Neo's attention_types) follows it.
    spelled = [list(getattr(sub, f.name)) for f in structural if f.kind == "per-layer"]
    structural += [f for f in fields if f.kind == "runs" and f.name not in names
                   and _run_length(getattr(sub, f.name)) in spelled]
    values = {count_field: len(keep), **{f.name: f.remap(keep) for f in structural}}
    got = built_signatures(model_class, _with(config, target, values))
    if _mismatches(got, want):
        values = _search(model_class, config, target, sub, n, keep, want, values, structural)
    for name, value in values.items():
        setattr(sub, name, value)
    changed = {k: v for k, v in values.items() if k != count_field}
    if changed:
        log.info("Remapped layer-indexing config fields: %s", ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    return changed


def _search(model_class, config, target, sub, n, keep, want, values, structural) -> dict:
    """When the direct remap is not exact: try values of the "every n" / "first k" integers, and for each
    solve the lists of layer indices block by block (in the list or not); keep the first exact config."""
    m = len(keep)
    builds = 0
    index_lists = [name for name, value in vars(sub).items()
                   if not name.startswith("_") and isinstance(value, list) and all(_is_index(v, n) for v in value)]
    ints = [f.name for f in structural if f.kind == "int"]

    def build(trial):
        nonlocal builds
        builds += 1
        return built_signatures(model_class, _with(config, target, trial))

    def score(trial):
        return _mismatches(build(trial), want)

    def solve_lists(trial):
        best, best_score = trial, score(trial)
        for name in index_lists:
            if not best_score:
                break
            outside, inside = build({**best, name: []}), build({**best, name: list(range(m))})
            if outside is None or inside is None or len(outside) != m or len(inside) != m:
                continue
            chosen = {**best, name: [j for j in range(m) if inside[j] == want[j] and outside[j] != want[j]]}
            s = score(chosen)
            if s < best_score:
                best, best_score = chosen, s
        return best, best_score

    best, best_score = solve_lists(dict(values))
    for _ in range(2):
        improved = False
        for name in ints:
            for value in range(0, max(m, int(best.get(name, 0))) + 2):
                if builds >= MAX_SEARCH_BUILDS or not best_score:
                    break
                trial, s = solve_lists({**best, name: value})
                if s < best_score:
                    best, best_score, improved = trial, s, True
        if not best_score or not improved:
            break
    if best_score:
        at_fault = sorted({f.name for f in structural} | set(ints)) or ["(no field found)"]
        raise SlebError(
            f"Cannot write a {type(sub).__name__} that describes the kept blocks {keep}: the config fields "
            f"{', '.join(at_fault)} index layers and no remap of them rebuilds the kept blocks exactly "
            f"({best_score} of {m} blocks would differ). Choose other blocks to remove, or report this architecture."
        )
    log.info("Rewrote the layer pattern explicitly after %d trial builds", builds)
    return best
