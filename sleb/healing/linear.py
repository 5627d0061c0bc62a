"""Training-free healing: one least-squares linear map per cut, folded into the block before it.

For a run of removed blocks a..b, the kept block p = a-1 ends with a projection (Linear,
or GPT-2's Conv1D) that writes straight into the residual stream and feeds nothing else
in the block (the MLP's down projection, found by probing, never by name). Its output M
and the rest of the block's output Y (= output - M) are recorded in the pruned model;
the dense model gives the hidden state H after block b. The map T minimises
||M T - (H - Y)||^2 + lam ||T - I||^2 (ridge towards "no change"), with X^T X
accumulated in float64 over micro-batches, and is folded as W <- T^T W (Conv1D: W T),
b <- b T. Cuts are processed in order, so each fit sees the corrections before it.
Where a block has no such writer (Gemma's post-norms, a routed MoE MLP), `fold_problem`
says so before any work.
"""

from __future__ import annotations

import logging
import time

import torch
from accelerate.utils import convert_to_fp32, send_to_device
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from ..blocks import find_blocks
from ..devices import module_device
from ..errors import SlebError
from ..loading import model_device
from ..verify import swapped_weights

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the needed block has run."""


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def projections(module: nn.Module) -> list[nn.Module]:
    """The linear projections inside `module`: `nn.Linear` and GPT-2's `Conv1D` (weight stored transposed).

    A subclass counts only if it still computes x W^T + b (Falcon's does; Llama 4's router,
    which returns routing scores and logits, does not).
    """
    return [m for m in module.modules() if isinstance(m, (nn.Linear, Conv1D)) and _affine(m)]


@torch.no_grad()
def _affine(linear: nn.Module) -> bool:
    if type(linear).forward in (nn.Linear.forward, Conv1D.forward):
        return True
    weight = linear.weight
    w = weight if isinstance(linear, Conv1D) else weight.T
    x = torch.randn(2, w.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    out = linear(x)
    want = x @ w + (linear.bias if linear.bias is not None else 0)
    return isinstance(out, torch.Tensor) and out.shape == want.shape and torch.allclose(out, want, rtol=1e-3, atol=1e-5)


def out_width(linear: nn.Module) -> int:
    return linear.nf if isinstance(linear, Conv1D) else linear.out_features


@torch.no_grad()
def fold(linear: nn.Module, t: torch.Tensor) -> None:
    """Make `linear` output `y T` instead of `y`: W <- T^T W (Linear) or W T (Conv1D), b <- b T."""
    weight = linear.weight
    w = weight.double().cpu()
    new = w @ t if isinstance(linear, Conv1D) else t.T @ w
    weight.copy_(new.to(weight.device, weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_((linear.bias.double().cpu() @ t).to(linear.bias.device, linear.bias.dtype))


def cuts(removed: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of removed (original) indices, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in sorted(removed):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


@torch.no_grad()
def _run_to(model, ids: torch.Tensor, block: nn.Module, pre=None, post=None) -> None:
    """Forward `ids` until `block` has run, calling `pre(args, kwargs)` / `post(output)` on it.

    `pre` gets the inputs on the block's device: this hook runs before accelerate's, which
    would move them there only afterwards (at a device boundary they still sit on the last one).
    """
    handles = []
    if pre is not None:
        def capture(module, args, kwargs):
            device = module_device(module)
            pre(send_to_device(args, device), send_to_device(kwargs, device))

        handles.append(block.register_forward_pre_hook(capture, with_kwargs=True))

    def stop(_m, _a, output):
        if post is not None:
            post(output)
        raise _Stop

    handles.append(block.register_forward_hook(stop))
    try:
        model(input_ids=ids.to(model_device(model)), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


def _probe_ids(model, ids: torch.Tensor | None) -> torch.Tensor:
    if ids is not None:
        return ids[:1, :16]
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(0))


# An offset that reaches the block output unchanged comes back off by rounding alone: 0.1 to 0.5 units of
# eps x || |output| + |offset| || on every family tested and on SmolLM2-135M (fp32 and bf16). A writer whose
# output also feeds a later module in the block adds that module's response on top: an MLP after the
# attention's projection 2e3 (a random Qwen3-MoE) to 1e6 (SmolLM2), a norm after the MLP (Gemma) 3e6.
ECHO_TOLERANCE = 64.0


def _echo_error(moved: torch.Tensor, delta: torch.Tensor, base: torch.Tensor, dtype: torch.dtype) -> float:
    """How far the block output moved from exactly the offset, in units of the rounding of output plus offset."""
    return float((moved - delta).norm() / (torch.finfo(dtype).eps * (base.abs() + delta.abs()).norm()))


@torch.no_grad()
def probe_writers(model, block_index: int, ids: torch.Tensor | None = None) -> list[tuple[nn.Module, float]]:
    """Each projection of a block that writes the hidden width, with the error of its offset's echo.

    Each candidate's output gets a random offset; the error is how far the block's output
    moved from exactly that offset, in units of rounding (`_echo_error`; near 0 for a
    projection added unchanged to the residual stream and read by nothing else).
    A half-precision block is probed in float32, where rounding cannot hide a small leak.
    """
    block = find_blocks(model).blocks[block_index]
    captured = {}
    _run_to(model, _probe_ids(model, ids), block, pre=lambda a, k: captured.update(args=a, kwargs=k))
    if probe_dtype(block) != next(block.parameters()).dtype:
        with swapped_weights(block, lambda w: w.float()):
            return _echoes(block, convert_to_fp32(captured["args"]), convert_to_fp32(captured["kwargs"]))
    return _echoes(block, captured["args"], captured["kwargs"])


def probe_dtype(block: nn.Module) -> torch.dtype:
    return torch.promote_types(next(block.parameters()).dtype, torch.float32)


def _echoes(block: nn.Module, args, kwargs) -> list[tuple[nn.Module, float]]:
    hidden = (args[0] if args else kwargs["hidden_states"])
    size = hidden.shape[-1]
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, a, o: order.append(m))
             for m in projections(block) if out_width(m) == size]
    try:
        base = _hidden(block(*args, **kwargs)).float()
    finally:
        for h in hooks:
            h.remove()
    found = []
    gen = torch.Generator().manual_seed(0)
    for linear in dict.fromkeys(order):
        delta = torch.randn(size, generator=gen).to(base.device, torch.float32) * (base.abs().mean() + 1)
        handle = linear.register_forward_hook(lambda m, a, o, d=delta: o + d.to(o.device, o.dtype))
        try:
            moved = _hidden(block(*args, **kwargs)).float() - base
        finally:
            handle.remove()
        found.append((linear, _echo_error(moved, delta, base, probe_dtype(block))))
    return found


def residual_writer(model, block_index: int, ids: torch.Tensor | None = None) -> nn.Module:
    """The last projection (in execution order) of a block whose output is added unchanged to the block's output.

    Raises SlebError when there is none (a norm after the MLP, an offset that also feeds the MLP, a routed MLP).
    """
    block = find_blocks(model).blocks[block_index]
    probed = probe_writers(model, block_index, ids)
    writers = [m for m, error in probed if error < ECHO_TOLERANCE]
    if not writers:
        seen = ", ".join(f"{n} {e:.2g}" for n, m in block.named_modules() for w, e in probed if m is w)
        raise SlebError(
            f"Block {block_index} ({type(block).__name__}) has no linear projection whose output is added unchanged "
            f"to the residual stream (error of the echo, in roundings: {seen or 'no candidates'}; tolerance "
            f"{ECHO_TOLERANCE:g}), "
            "e.g. a norm after the MLP; the linear fold cannot be applied to this architecture."
        )
    return writers[-1]


def fold_problem(pruned, removed: list[int]) -> str | None:
    """Why the fold cannot apply to `pruned` (blocks `removed`, original indices, deleted), or None.

    Probes the block before each cut on a few fixed tokens: no data, no dense model needed.
    """
    total = len(find_blocks(pruned).blocks) + len(removed)
    kept = [i for i in range(total) if i not in set(removed)]
    for first, _ in cuts(removed):
        if first > 0:
            try:
                residual_writer(pruned, kept.index(first - 1))
            except SlebError as exc:
                return str(exc)
    return None


@torch.no_grad()
def fit_linear(dense, pruned, removed: list[int], windows: torch.Tensor, ridge: float = 1e-3,
               batch_size: int = 4, progress: bool = True) -> dict:
    """Fit and fold one map per cut into `pruned` (in place). Returns a per-cut report."""
    total = len(find_blocks(dense).blocks)
    kept = [i for i in range(total) if i not in set(removed)]
    if len(find_blocks(pruned).blocks) != len(kept):
        raise SlebError(f"The pruned model has {len(find_blocks(pruned).blocks)} blocks; the removal order "
                        f"leaves {len(kept)}.")
    report = []
    start = time.perf_counter()
    for first, last in cuts(removed):
        if first == 0:
            log.warning("Blocks %d-%d start the stack: no kept block precedes them, so this cut is skipped.",
                        first, last)
            report.append({"cut": [first, last], "skipped": "no kept block before the cut"})
            continue
        report.append(_fit_cut(dense, pruned, kept, first, last, windows, ridge, batch_size, progress))
    log.info("Linear healing of %d cut(s) in %.1f s", len(report), time.perf_counter() - start)
    return {"cuts": report, "ridge": ridge, "tokens": int(windows.numel()),
            "seconds": round(time.perf_counter() - start, 3)}


def _fit_cut(dense, pruned, kept, first, last, windows, ridge, batch_size, progress) -> dict:
    p = kept.index(first - 1)
    block = find_blocks(pruned).blocks[p]
    target_block = find_blocks(dense).blocks[last]
    writer = residual_writer(pruned, p, windows)
    name = next(n for n, m in block.named_modules() if m is writer)
    d = out_width(writer)
    xtx = torch.zeros(d, d, dtype=torch.float64)
    xtr = torch.zeros(d, d, dtype=torch.float64)
    rtr = 0.0
    seen = {}
    for batch in tqdm(windows.split(batch_size), desc=f"linear fit, cut {first}-{last}", disable=not progress):
        _run_to(dense, batch, target_block, post=lambda o: seen.update(target=_hidden(o)))
        handle = writer.register_forward_hook(lambda m, a, o: seen.update(m=o))
        try:
            _run_to(pruned, batch, block, post=lambda o: seen.update(out=_hidden(o)))
        finally:
            handle.remove()
        m = seen["m"].reshape(-1, d).double().cpu()
        r = (seen["target"].reshape(-1, d).double().cpu() - seen["out"].reshape(-1, d).double().cpu()) + m
        xtx += m.T @ m
        xtr += m.T @ r
        rtr += float((r * r).sum())
    eye = torch.eye(d, dtype=torch.float64)
    lam = ridge * float(xtx.diagonal().mean())
    t = torch.linalg.solve(xtx + lam * eye, xtr + lam * eye)

    def err(tt):  # ||M T - R||^2 from the accumulated statistics
        return float((tt.T @ xtx @ tt).trace() - 2 * (tt.T @ xtr).trace() + rtr)

    before, after = err(eye), err(t)
    fold(writer, t)
    log.info("Cut %d-%d folded into block %d (%s): squared error at the cut %.4g -> %.4g (%.1f%% less)",
             first, last, first - 1, name, before, after, 100 * (1 - after / before) if before else 0.0)
    return {"cut": [first, last], "block": first - 1, "module": name, "error_before": before, "error_after": after,
            "residual_energy": rtr}
