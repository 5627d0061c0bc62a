"""Where tensors meet the model: each input goes to the device of the module that consumes it.

A model may sit on one device, or be spread by accelerate's `device_map` over several
GPUs (and offloaded parts whose weights wait on `meta` until their hook loads them). So:

- token ids go to the input embeddings' device (`to_input`);
- final hidden states go to the output head's device (`head_device`);
- between blocks, accelerate's hooks move hidden states (a replayed output stays where its
  block put it); where sleb compares a block's input with its output, the input goes to the
  output's device;
- targets go to wherever the logits came out (`.to(logits.device)` at the call site).

A module's device is accelerate's execution device when a hook carries one (offloaded
weights report `meta`, yet the hook computes elsewhere), else its first parameter's or
buffer's. Everything in sleb that feeds the model goes through here.
"""

from __future__ import annotations

import torch
from torch import nn


def _hook_device(module: nn.Module) -> torch.device | None:
    """The execution device of accelerate hooks attached to `module`, if any."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    for h in hooks:
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return None


def module_device(module: nn.Module) -> torch.device:
    """The device where `module` computes (see the module docstring); CPU for a module without tensors."""
    hooked = _hook_device(module)
    if hooked is not None:
        return hooked
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def offloaded_modules(model: nn.Module) -> list[str]:
    """Modules whose weights accelerate keeps off the model (on `meta`, loaded by a hook at each call)."""
    return [name for name, module in model.named_modules()
            if any(p.is_meta for p in module.parameters(recurse=False))]


def input_device(model: nn.Module) -> torch.device:
    """The device of the input embeddings: where token ids must go."""
    return module_device(model.get_input_embeddings())


def head_device(model: nn.Module) -> torch.device:
    """The device of the output head: where the final hidden states must go."""
    head = model.get_output_embeddings()
    return module_device(head if head is not None else model)


def to_input(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Token ids on the input embeddings' device."""
    return ids.to(input_device(model))


def devices_of(model: nn.Module) -> list[str]:
    """Every device the model computes on (one entry for a model on one device)."""
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, dict) and device_map:
        return sorted({d if isinstance(d, str) else f"cuda:{d}" for d in device_map.values()})
    return [str(input_device(model))]
