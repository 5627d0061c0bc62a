"""A short fingerprint of a model's weights, so cached searches never outlive the weights they scored.

Two models with the same config but different weights (a Hub revision, a rewritten local
folder, another seed) must not share a search state or a cached baseline result. The
fingerprint hashes, for every parameter: its name, shape, dtype, the float64 sum of all its
values and an evenly strided sample of them; plus the Hub commit when the config has one.
Offloaded parameters (on `meta`, kept in an accelerate hook's weights map) are read from there.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

SAMPLE = 64  # values sampled per tensor


def _offloaded(module: nn.Module, name: str) -> torch.Tensor | None:
    """The real value of an offloaded parameter, from its accelerate hook's weights map."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        weights = getattr(h, "weights_map", None)
        if weights is not None:
            try:
                return weights[name]
            except KeyError:
                continue
    return None


def _digest_tensor(h, tensor: torch.Tensor) -> None:
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    sample = flat[::step][:SAMPLE].float().cpu()
    h.update(sample.numpy().tobytes())
    h.update(repr(float(flat.sum(dtype=torch.float64))).encode())


@torch.inference_mode()
def weights_fingerprint(model: nn.Module) -> str:
    """A hex digest that changes when any weight of `model` changes (see the module docstring)."""
    h = hashlib.sha256()
    h.update(str(getattr(getattr(model, "config", None), "_commit_hash", None)).encode())
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            h.update(f"{module_name}.{name}|{tuple(param.shape)}|{param.dtype}".encode())
            value = _offloaded(module, name) if param.is_meta else param
            if value is not None and not value.is_meta:
                _digest_tensor(h, value)
    return h.hexdigest()[:16]
