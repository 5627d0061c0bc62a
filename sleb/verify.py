"""Check a pruned model before it is written, and its checkpoint after.

- `check_config` (before writing): the pruned config, built on the meta device as
  `from_pretrained` would read it, must have the pruned model's parameter names and
  shapes and, block for block, its structure. Otherwise saving is refused, naming the
  config fields that index layers.
- `Verifier` (after writing): logits of the dense model with the removed blocks bypassed
  are taken on a few tokens before removal; the saved folder is reloaded with plain
  transformers and must give the same logits (tolerance by dtype) and load every weight.
  `save_checkpoint(..., verifier=...)` runs it on the folder before moving it into place,
  so a checkpoint that fails is never left behind.
- `verify_saved`: the same check for a folder already written, given the dense model (the zoo).
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import torch

from .blocks import BlockSwitch, find_blocks, text_config
from .errors import SlebError
from .layermap import candidate_fields, layer_fields, meta_model, per_layer_fields_by_class, reloaded_config, signatures

log = logging.getLogger(__name__)

PROBE_TOKENS = 16
# Largest |logit difference| allowed, relative to max(1, largest |logit|), by the coarser dtype involved.
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def check_config(model) -> None:
    """Refuse when the model's config would not rebuild it: parameter names, shapes, block structure."""
    meta = meta_model(type(model), reloaded_config(model.config))
    want = {name: tuple(p.shape) for name, p in model.named_parameters()}
    got = {name: tuple(p.shape) for name, p in meta.named_parameters()}
    problems = [f"missing {n}" for n in sorted(set(want) - set(got))][:3]
    problems += [f"unexpected {n}" for n in sorted(set(got) - set(want))][:3]
    problems += [f"{n}: {got[n]} instead of {want[n]}" for n in sorted(set(want) & set(got)) if want[n] != got[n]][:3]
    mine, built = signatures(find_blocks(model).blocks), signatures(find_blocks(meta).blocks)
    problems += [f"block {i} is built differently" for i, (a, b) in enumerate(zip(mine, built, strict=True))
                 if a != b][:3]
    if problems:
        raise SlebError(
            f"The saved config would not rebuild this {type(model).__name__} ({'; '.join(problems)}); "
            f"config fields that index layers: {', '.join(_layer_field_names(model)) or 'none found'}. "
            "Nothing was written."
        )


def _layer_field_names(model) -> list[str]:
    config, sub = model.config, text_config(model)
    target = "root" if sub is config else "text"
    n = len(find_blocks(model).blocks)
    base = signatures(find_blocks(meta_model(type(model), reloaded_config(config))).blocks)
    fields = candidate_fields(sub, n, per_layer_fields_by_class(sub))
    return sorted(f.name for f in layer_fields(type(model), config, target, fields, base))


def probe_ids(model, length: int = PROBE_TOKENS) -> torch.Tensor:
    """A fixed row of token ids from the whole vocabulary."""
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))


@torch.inference_mode()
def bypassed_logits(model, skip, ids: torch.Tensor) -> torch.Tensor:
    """The model's own logits with the blocks `skip` bypassed, as float32 on the CPU."""
    device = model.get_input_embeddings().weight.device
    with BlockSwitch(find_blocks(model).blocks) as switch, switch.state(skip=set(skip)):
        return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()


def tolerance(*dtypes: torch.dtype) -> float:
    return max(TOLERANCE.get(d, 5e-2) for d in dtypes)


class Verifier:
    """Logits of `model` with `removed` (current indices) bypassed; `__call__(folder)` checks a reload against them."""

    def __init__(self, model, removed, length: int = PROBE_TOKENS,
                 reference: str = "dense model with the removed blocks bypassed"):
        self.removed = sorted(removed)
        self.reference = reference
        self.dtype = next(model.parameters()).dtype
        self.ids = probe_ids(model, length)
        self.expected = bypassed_logits(model, self.removed, self.ids)

    def __call__(self, folder: str | Path, saved_dtype: torch.dtype | None = None,
                 gguf_file: str | None = None) -> dict:
        """Reload `folder` (or the GGUF file `gguf_file` in it, dequantized) and compare its logits."""
        from transformers import AutoModelForCausalLM

        reloaded, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=self.dtype, trust_remote_code=False, output_loading_info=True, gguf_file=gguf_file
        )
        try:
            reloaded.eval()
            bad = {k: sorted(v)[:5] for k, v in info.items() if k != "error_msgs" and v}
            if bad:
                raise SlebError(f"The saved checkpoint does not reload cleanly: {bad}. Nothing was kept.")
            with torch.inference_mode():
                got = reloaded(input_ids=self.ids, use_cache=False).logits.float()
        finally:
            del reloaded
            gc.collect()
        tol = tolerance(self.dtype, saved_dtype or self.dtype)
        scale = max(1.0, float(self.expected.abs().max()))
        diff = float((got - self.expected).abs().max()) if got.shape == self.expected.shape else float("inf")
        result = {
            "reload": "passed" if diff <= tol * scale else "failed",
            "reference": self.reference,
            "tokens": int(self.ids.shape[1]),
            "max_abs_logit_diff": diff,
            "tolerance": tol * scale,
        }
        if result["reload"] != "passed":
            raise SlebError(
                f"The reloaded checkpoint does not reproduce the {self.reference}: max |logit difference| {diff:.3g} "
                f"> {tol * scale:.3g} on {result['tokens']} tokens. Nothing was kept; please report this "
                "architecture (or pass --no-verify to save it anyway)."
            )
        log.info("Verified the saved checkpoint: max |logit difference| %.3g (tolerance %.3g)", diff, tol * scale)
        return result


def verify_saved(folder: str | Path, dense_model, removed, remove_on_failure: bool = True) -> dict:
    """Reload a pruned folder and compare it with `dense_model` with `removed` bypassed.

    On failure the folder is deleted (unless `remove_on_failure=False`) and SlebError raised.
    """
    try:
        return Verifier(dense_model, removed)(folder)
    except SlebError:
        if remove_on_failure:
            shutil.rmtree(folder, ignore_errors=True)
        raise
