"""Check a pruned model before it is written, and its checkpoint after.

- `check_config` (before writing): the pruned config, built on the meta device as
  `from_pretrained` would read it, must have the pruned model's parameter names and
  shapes and, block for block, its structure. Otherwise saving is refused, naming the
  config fields that index layers.
- `Verifier` (after writing): logits of the dense model with the removed blocks bypassed
  are taken on a few tokens before removal; the saved folder is reloaded with plain
  transformers and must give the same logits and load every weight: within 1e-4 x max(1, |logit|)
  in float32, within twice the rounding measured on the same model in a half dtype.
  `save_checkpoint(..., verifier=...)` runs it on the folder before moving it into place,
  so a checkpoint that fails is never left behind.
- `verify_saved`: the same check for a folder already written, given the dense model (the zoo).
"""

from __future__ import annotations

import contextlib
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
# Largest |logit difference| allowed between two runs in float32 or float64, relative to max(1, largest |logit|).
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
HALF = (torch.bfloat16, torch.float16)
# A half-precision reload may differ from the model in memory by this many times the measured rounding of the
# same model in that dtype. On SmolLM2-135M saved in bf16 a correct reload differs by
# exactly the measured weight rounding (0.150), one o_proj scaled by 1.3 by 0.97 to 16.8 (scripts/bench_verify.py).
ROUNDING_FACTOR = 2.0
UNMEASURED = {torch.float16: 2e-2, torch.bfloat16: 5e-2}  # relative tolerance where the rounding cannot be measured


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


@contextlib.contextmanager
def swapped_weights(model, convert):
    """Run `model` with each module's own weights replaced by `convert(weights)` while that module runs.

    One module at a time, so no copy of the model is made; the weights come back as they were.
    """
    kept = {}

    def swap(module, _args):
        for p in module.parameters(recurse=False):
            if p not in kept:  # a module that runs inside itself keeps its first swap
                kept[p] = p.data
                p.data = convert(p.data)

    def restore(module, _args, _output):
        for p in module.parameters(recurse=False):
            if p in kept:
                p.data = kept.pop(p)

    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    hooks = [h for m in owners for h in (m.register_forward_pre_hook(swap), m.register_forward_hook(restore))]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for p, data in kept.items():
            p.data = data


def measured_rounding(model, skip, ids: torch.Tensor, dtype: torch.dtype, expected: torch.Tensor) -> float | None:
    """Max |logit difference| that rounding to the half `dtype` makes on this model, on the same tokens.

    A float32 model saved in `dtype` computes as before with rounded weights: it runs so, against
    `expected` (its own logits). A model held in `dtype` computes in it: it runs in float32 for the
    comparison. Weights are converted one module at a time. None for an offloaded model (its
    weights live in the offload hooks).
    """
    if any(p.is_meta for p in model.parameters()):
        return None
    own = next(model.parameters()).dtype
    convert = (lambda w: w.float()) if own == dtype else (lambda w: w.to(dtype).to(w.dtype))
    with swapped_weights(model, convert):
        other = bypassed_logits(model, skip, ids)
    return float((other - expected).abs().max())


class Verifier:
    """Logits of `model` with `removed` (current indices) bypassed; `__call__(folder)` checks a reload against them.

    For half-precision checkpoints (or models) the tolerance is `ROUNDING_FACTOR` times the measured
    rounding of this model in that dtype (`measured_rounding`), taken here while the model is in memory.
    """

    def __init__(self, model, removed, length: int = PROBE_TOKENS,
                 reference: str = "dense model with the removed blocks bypassed"):
        self.removed = sorted(removed)
        self.reference = reference
        self.dtype = next(model.parameters()).dtype
        self.ids = probe_ids(model, length)
        self.expected = bypassed_logits(model, self.removed, self.ids)
        halves = [self.dtype] if self.dtype in HALF else list(HALF) if self.dtype == torch.float32 else []
        self.rounding = {d: measured_rounding(model, self.removed, self.ids, d, self.expected) for d in halves}

    def tolerance(self, saved_dtype: torch.dtype | None = None) -> float:
        """Largest |logit difference| allowed for a reload saved in `saved_dtype` (None: the model's own)."""
        scale = max(1.0, float(self.expected.abs().max()))
        floor = TOLERANCE.get(self.dtype, TOLERANCE[torch.float32]) * scale
        coarse = next((d for d in (saved_dtype, self.dtype) if d in HALF), None)
        if coarse is None:
            return floor
        if self.rounding.get(coarse) is None:
            log.warning("The rounding of %s could not be measured on this model; allowing %g x max(1, |logit|).",
                        coarse, UNMEASURED[coarse])
            return UNMEASURED[coarse] * scale
        return max(floor, ROUNDING_FACTOR * self.rounding[coarse])

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
        tol = self.tolerance(saved_dtype)
        diff = float((got - self.expected).abs().max()) if got.shape == self.expected.shape else float("inf")
        result = {
            "reload": "passed" if diff <= tol else "failed",
            "reference": self.reference,
            "tokens": int(self.ids.shape[1]),
            "max_abs_logit_diff": diff,
            "tolerance": tol,
        }
        if result["reload"] != "passed":
            raise SlebError(
                f"The reloaded checkpoint does not reproduce the {self.reference}: max |logit difference| {diff:.3g} "
                f"> {tol:.3g} on {result['tokens']} tokens. Nothing was kept; please report this "
                "architecture (or pass --no-verify to save it anyway)."
            )
        log.info("Verified the saved checkpoint: max |logit difference| %.3g (tolerance %.3g)", diff, tol)
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
