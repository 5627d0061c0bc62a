"""Which GGUF metadata keys describe layers, and their values once some blocks are removed.

A key is per-layer when it is an array under `{arch}.` whose length equals the block count
(or one of the keys llama.cpp reads as a per-layer array, whose length must then be the
block count): it is sliced to the kept blocks. A scalar from which the runtime derives a
per-layer property from the block index (a sliding-window period, a "first k dense" count,
an interleave step) is remapped when the kept blocks still follow such a rule, and refused,
naming the key, when they do not. Every other key is kept as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import SlebError

# Keys llama.cpp reads with `get_key_or_arr` (a scalar for all layers, or one value per layer).
KNOWN_PER_LAYER = ("attention.head_count", "attention.head_count_kv", "feed_forward_length",
                   "attention.sliding_window_pattern", "expert_feed_forward_length")
# Arrays under `{arch}.` that never describe layers, even when their length happens to equal the block count.
NOT_PER_LAYER = ("rope.dimension_sections", "classifier.output_labels")


def _swa_standard(i: int, p: int) -> bool:  # llama.cpp `set_swa_pattern(p)`: windowed unless i % p == p - 1
    return p == 0 or i % p < p - 1


def _swa_dense_first(i: int, p: int) -> bool:  # `set_swa_pattern(p, dense_first=true)`: full attention at i % p == 0
    return p == 0 or i % p != 0


def _every_nth_from_one(i: int, step: int) -> bool:  # MoE / full attention at (i + 1) % step == 0
    return step > 0 and (i + 1) % step == 0


def _every_nth_at_one(i: int, step: int) -> bool:  # nomic-bert `moe_every_n_layers`: MoE at i % step == 1
    return step > 0 and i % step == 1


# Scalar keys that define a periodic per-layer property; each rule must still describe the kept blocks.
PERIODIC: dict[str, tuple[Callable[[int, int], bool], ...]] = {
    "attention.sliding_window_pattern": (_swa_standard, _swa_dense_first),
    "interleave_moe_layer_step": (_every_nth_from_one,),
    "full_attention_interval": (_every_nth_from_one,),
    "rescale_every_n_layers": (_every_nth_from_one,),
    "moe_every_n_layers": (_every_nth_at_one,),
}
# Scalar keys counting layers at an end of the stack.
LEADING_COUNT = ("leading_dense_block_count",)
TRAILING_COUNT = ("nextn_predict_layers",)
# Scalar keys whose per-layer meaning sleb does not remap: refused when non-zero.
UNMAPPABLE = ("attention.shared_kv_layers", "n_deepstack_layers")
# Architectures whose llama.cpp loader applies a sliding-window period when the file states none.
DEFAULT_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "llama4": 4}


def _refuse(key: str, why: str) -> SlebError:
    return SlebError(f"Cannot remove these blocks from this GGUF: {key} {why}. Nothing was written; "
                     "choose other blocks, or prune the safetensors checkpoint instead.")


def _periodic(key: str, value: int, rules, keep: Sequence[int]) -> int:
    """The period that gives the kept blocks the same flags under every rule; refused when none does."""
    wanted = [[rule(i, value) for i in keep] for rule in rules]
    for period in [value, *range(len(keep) + 1)]:
        if all([rule(j, period) for j in range(len(keep))] == want for rule, want in zip(rules, wanted, strict=True)):
            return period
    raise _refuse(key, f"= {value} derives a per-layer property from the block index, and no value of it describes "
                  "the kept blocks")


def _scalar(arch: str, name: str, value, total: int, keep: Sequence[int]):
    """The new value of one scalar `{arch}.` key, or the value unchanged."""
    key = f"{arch}.{name}"
    if name in PERIODIC and isinstance(value, int):
        return _periodic(key, value, PERIODIC[name], keep)
    if name in LEADING_COUNT:
        return sum(1 for i in keep if i < value)
    if name in TRAILING_COUNT and value:
        if any(i not in keep for i in range(total - value, total)):
            raise _refuse(key, f"= {value} marks the last {value} blocks as prediction heads; keep them")
        return value
    if name in UNMAPPABLE and value:
        raise _refuse(key, f"= {value} derives a per-layer property from the block index that sleb cannot remap")
    return value


def check_default_period(arch: str, fields: dict, total: int, keep: Sequence[int]) -> None:
    """Refuse a removal that breaks a sliding-window period the runtime applies when the file states none."""
    name = "attention.sliding_window_pattern"
    period = DEFAULT_SWA_PERIOD.get(arch)
    if period is None or f"{arch}.{name}" in fields:
        return
    rules = PERIODIC[name]
    if not all([rule(i, period) for i in keep] == [rule(j, period) for j in range(len(keep))] for rule in rules):
        raise _refuse(f"{arch}.{name}", f"is absent, so llama.cpp applies its default period {period} for {arch}, "
                      "which the kept blocks no longer follow")


def new_value(arch: str, key: str, value, total: int, keep: Sequence[int]):
    """`value` of metadata `key` for a model that keeps blocks `keep` (original indices) of `total`."""
    prefix = f"{arch}."
    if not key.startswith(prefix):
        return value
    name = key[len(prefix):]
    if name == "block_count":
        return len(keep)
    if not isinstance(value, list):
        return _scalar(arch, name, value, total, keep)
    if name in NOT_PER_LAYER:
        return value
    if len(value) == total:
        return [value[i] for i in keep]
    if name in KNOWN_PER_LAYER:
        raise SlebError(f"This GGUF is inconsistent: {key} holds {len(value)} values but the model has {total} "
                        "blocks. Nothing was written; the file may be damaged or from a broken converter.")
    return value
