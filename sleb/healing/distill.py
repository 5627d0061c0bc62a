"""Trained healing: distil the dense model's next-token distribution into the pruned one.

Loss per token: T^2 * KL(teacher_T || student_T) on logits softened by temperature T,
plus `lm_weight` times the usual next-token loss. The student trains through LoRA
(`peft`, every projection inside the blocks, GPT-2's Conv1D included, merged into the
weights at the end) or, with `train_blocks`, those blocks in full. AdamW, linear warmup
then cosine decay; bf16 runs under CPU/GPU autocast with fp32 weights. A state file is
written atomically every `save_every` steps and a run with the same settings resumes
from it; the data order and the LoRA initialisation come from `seed`, dropout is off
(the student trains in eval mode, like the teacher) and the state keeps the random
generators, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..blocks import find_blocks
from ..errors import SlebError
from ..loading import model_device
from .linear import Conv1D, projections
from .text import budget_windows

log = logging.getLogger(__name__)


@dataclass
class DistillSpec:
    # Defaults: what fits 15 minutes on a 2-core CPU for SmolLM2-135M (scripts/bench_heal.py, README "Healing").
    tokens: int = 98304  # training token budget (192 windows of 512: one pass over the local C4 healing pool)
    batch_windows: int = 1  # windows per optimizer step (at small budgets, more steps beat bigger batches)
    micro_batch: int = 1  # windows per forward
    lr: float = 2e-3
    warmup: float = 0.1  # share of steps
    temperature: float = 1.0
    lm_weight: float = 1.0  # next-token loss beside the KL: more of the perplexity gap back (README, "Healing")
    lora_rank: int = 16
    lora_alpha: int = 32
    train_blocks: list[int] = field(default_factory=list)  # pruned indices trained in full instead of LoRA
    dtype: str = "bf16"  # compute dtype: fp32 or bf16 (autocast)
    seed: int = 0
    save_every: int = 10


def _autocast(device: torch.device, dtype: str):
    if dtype in ("bf16", "bfloat16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if dtype in ("fp32", "float32"):
        return contextlib.nullcontext()
    raise SlebError(f"Unknown distillation dtype {dtype!r}; use fp32 or bf16.")


def distill_loss(student_logits, teacher_logits, ids, temperature: float, lm_weight: float) -> torch.Tensor:
    """Mean per-token T^2 * KL(teacher || student) (+ lm_weight * next-token cross-entropy)."""
    s = student_logits.float() / temperature
    t = teacher_logits.to(student_logits.device).float() / temperature  # the heads may sit on different GPUs
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    loss = kl.mean() * temperature**2
    if lm_weight:
        targets = ids[:, 1:].flatten().to(student_logits.device)
        ce = F.cross_entropy(student_logits[:, :-1].float().flatten(0, 1), targets)
        loss = loss + lm_weight * ce
    return loss


@torch.no_grad()
def teacher_logprobs(teacher, windows: torch.Tensor, dtype: str = "fp32") -> tuple[list[torch.Tensor], float]:
    """The teacher's log-probabilities on held-out windows (kept in bf16, to score students against) and its NLL."""
    device = model_device(teacher)
    out, nll = [], 0.0
    for batch in windows.split(1):
        with _autocast(device, dtype):
            logits = teacher(input_ids=batch.to(device), use_cache=False).logits
        logprobs = F.log_softmax(logits.float(), -1).cpu()
        nll -= float(logprobs[:, :-1].gather(-1, batch[:, 1:, None]).sum())
        out.append(logprobs.to(torch.bfloat16))
    return out, nll / (windows.shape[0] * (windows.shape[1] - 1))


@torch.no_grad()
def heldout_scores(student, teacher, windows: torch.Tensor, dtype: str = "fp32", reference=None) -> dict:
    """Mean NLL of the student, and its KL to the teacher, per token on held-out windows.

    `reference` (from `teacher_logprobs`) spares running the teacher again.
    """
    device = model_device(student)
    reference = reference if reference is not None else teacher_logprobs(teacher, windows, dtype)[0]
    nll = kl = 0.0
    for batch, ref in zip(windows.split(1), reference, strict=True):
        batch = batch.to(device)
        with _autocast(device, dtype):
            s = F.log_softmax(student(input_ids=batch, use_cache=False).logits.float(), -1).cpu()
        nll -= float(s[:, :-1].gather(-1, batch[:, 1:, None].cpu()).sum())
        kl += float(F.kl_div(s, ref.float(), log_target=True, reduction="sum"))
    predicted = windows.shape[0] * (windows.shape[1] - 1)
    return {"nll": nll / predicted, "kl": kl / windows.numel()}


def _lora_config(model, spec: DistillSpec):
    """LoRA on every projection inside the blocks: `nn.Linear`, and GPT-2's `Conv1D` (fan_in_fan_out)."""
    from peft import LoraConfig

    inside = {id(p) for block in find_blocks(model).blocks for p in projections(block)}
    targets = [name for name, m in model.named_modules() if id(m) in inside]
    # peft sets fan_in_fan_out per module type as it wraps each one; start from the first target's kind.
    first = model.get_submodule(targets[0]) if targets else None
    return LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      bias="none", fan_in_fan_out=isinstance(first, Conv1D))


def _devices(*models) -> list[torch.device]:
    return sorted({p.device for m in models for p in m.parameters() if p.device.type == "cuda"}, key=str)


def rng_state(*models) -> dict:
    """The generators a training step may draw from: torch on the CPU and on every GPU the models use."""
    return {"cpu": torch.get_rng_state(), "cuda": {str(d): torch.cuda.get_rng_state(d) for d in _devices(*models)}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    for device, value in state["cuda"].items():
        torch.cuda.set_rng_state(value, torch.device(device))


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _step_windows(step: int, spec: DistillSpec, pool: int) -> list[int]:
    """Window indices of one optimizer step: passes over the pool, each in its own seeded order."""
    out = []
    for k in range(step * spec.batch_windows, (step + 1) * spec.batch_windows):
        epoch, pos = divmod(k, pool)
        order = torch.randperm(pool, generator=torch.Generator().manual_seed(spec.seed * 1000 + epoch))
        out.append(int(order[pos]))
    return out


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _resume(path: Path | None, key: str, trainable: dict, optimizer, scheduler, steps: int) -> tuple[int, float, list]:
    """Load a matching state file into the trainable weights, optimizer, schedule and generators.

    Returns (step, seconds, losses) so far: (0, 0.0, []) without a state of these settings.
    """
    if path is None or not path.is_file():
        return 0, 0.0, []
    state = torch.load(path, weights_only=False)
    if state.get("key") != key:
        log.warning("Ignoring distillation state %s: it belongs to other settings or data.", path)
        return 0, 0.0, []
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(state["trainable"][n])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "rng" in state:
        set_rng_state(state["rng"])
    log.info("Resuming distillation at step %d of %d from %s", state["step"], steps, path)
    return state["step"], state["seconds"], state["losses"]


def _trainable_model(student, spec: DistillSpec):
    """`student` wrapped with LoRA adapters, or with only `spec.train_blocks` left trainable."""
    from peft import get_peft_model

    if not spec.train_blocks:
        return get_peft_model(student, _lora_config(student, spec))
    blocks = find_blocks(student).blocks
    for p in student.parameters():
        p.requires_grad_(False)
    for i in spec.train_blocks:
        if not 0 <= i < len(blocks):
            raise SlebError(f"--train-blocks {i} is out of range: the pruned model has blocks 0..{len(blocks) - 1}.")
        for p in blocks[i].parameters():
            p.requires_grad_(True)
    return student


def _accumulate_gradients(model, teacher, batch: torch.Tensor, spec: DistillSpec) -> float:
    """Backward the distillation loss of one step's windows, micro-batch by micro-batch; returns its mean."""
    device = model_device(model)
    total = 0.0
    for micro in batch.split(spec.micro_batch):
        micro = micro.to(device)
        with _autocast(device, spec.dtype):
            with torch.no_grad():
                t_logits = teacher(input_ids=micro.to(model_device(teacher)), use_cache=False).logits
            s_logits = model(input_ids=micro, use_cache=False).logits
        loss = distill_loss(s_logits, t_logits, micro, spec.temperature, spec.lm_weight)
        (loss * micro.shape[0] / batch.shape[0]).backward()
        total += float(loss.detach()) * micro.shape[0] / batch.shape[0]
        del s_logits, t_logits, loss
    return total


def distill(student, teacher, windows: torch.Tensor, spec: DistillSpec, state_path: str | os.PathLike | None = None,
            key: str = "", progress: bool = True, stop_after: int | None = None):
    """Train `student` towards `teacher` on `windows`; returns `(healed model, report)`.

    The returned model is `student` with LoRA merged (or its trained blocks updated).
    `stop_after` ends this run after that many steps, leaving the state file for a resume
    (as an interruption would); the report then has `"finished": False`.
    """
    if spec.batch_windows % spec.micro_batch:
        raise SlebError(f"batch_windows ({spec.batch_windows}) must be a multiple of micro_batch ({spec.micro_batch}).")
    seqlen = windows.shape[1]
    total_windows, repeated = budget_windows(windows.shape[0], spec.tokens, seqlen)
    steps = max(1, total_windows // spec.batch_windows)
    warmup = int(spec.warmup * steps)
    key = hashlib.sha256(json.dumps([key, asdict(spec), list(windows.shape)], sort_keys=True).encode()).hexdigest()[:16]

    torch.manual_seed(spec.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    model = _trainable_model(student, spec)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=spec.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, warmup))

    path = Path(state_path) if state_path else None
    step, seconds, losses = _resume(path, key, trainable, optimizer, scheduler, steps)

    # Dropout stays off (eval mode), as in the teacher and in use: the student learns the function it will
    # compute, and a step's gradient depends only on its windows (the generators are saved all the same).
    model.eval()
    bar = tqdm(total=steps, initial=step, desc="distill", disable=not progress)
    ran = 0
    while step < steps and (stop_after is None or ran < stop_after):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total = _accumulate_gradients(model, teacher, windows[_step_windows(step, spec, windows.shape[0])], spec)
        optimizer.step()
        scheduler.step()
        step += 1
        ran += 1
        seconds += time.perf_counter() - start
        losses.append(round(total, 5))
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        if path is not None and (step % spec.save_every == 0 or step == steps or ran == stop_after):
            _atomic_save({"key": key, "step": step, "seconds": seconds, "losses": losses,
                          "rng": rng_state(model, teacher),
                          "trainable": {n: p.detach().clone() for n, p in trainable.items()},
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)
    bar.close()
    model.eval()
    finished = step >= steps
    merged = model.merge_and_unload() if not spec.train_blocks else model
    for p in merged.parameters():
        p.requires_grad_(False)
    report = {**asdict(spec), "method": "full" if spec.train_blocks else "lora", "steps": steps,
              "steps_done": step, "tokens_trained": step * spec.batch_windows * seqlen,
              "repeated_tokens": repeated, "seconds": round(seconds, 3), "loss_first": losses[:1],
              "loss_last": losses[-1:], "finished": finished}
    return merged, report
