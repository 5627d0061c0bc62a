"""Model size and peak memory over a stretch of work.

Memory: CUDA, `torch.cuda.max_memory_allocated` over the model's memory pass (reset before);
CPU, the process's peak RSS (VmHWM, reset by writing 5 to /proc/self/clear_refs) over the pass.
Both models stay resident, so the peak is also given over the baseline at the reset (this
model's activations, KV cache, temporaries), beside the model's parameter + buffer bytes.
On several GPUs the CUDA figures are summed over the devices.
"""

from __future__ import annotations

import ctypes
import gc
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each tensor once (tied weights once)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _cuda_devices() -> range:
    return range(torch.cuda.device_count())


class PeakMemory:
    """Peak memory over a stretch of work: CUDA allocator peak, else the process's peak RSS (VmHWM)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.base = 0

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            self.base = 0
            for index in _cuda_devices():
                torch.cuda.synchronize(index)
                torch.cuda.reset_peak_memory_stats(index)
                self.base += torch.cuda.memory_allocated(index)
            return
        try:  # hand freed heap back first, so the baseline is what is really in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            log.warning("Cannot reset the peak RSS (/proc/self/clear_refs); it is the peak since the process began.")
        self.base = (_proc_status_kib("VmRSS") or 0) * 1024

    def read(self) -> tuple[float, float]:
        """(peak bytes, peak bytes over the baseline at `reset`)."""
        if self.cuda:
            peak = 0
            for index in _cuda_devices():
                torch.cuda.synchronize(index)
                peak += torch.cuda.max_memory_allocated(index)
        else:
            hwm = _proc_status_kib("VmHWM")
            peak = hwm * 1024 if hwm is not None else float("nan")
        return float(peak), float(peak - self.base)
