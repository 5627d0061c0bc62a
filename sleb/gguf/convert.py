"""A GGUF of a pruned safetensors checkpoint, made by llama.cpp's own converter and quantiser.

llama.cpp's `convert_hf_to_gguf.py` is not on PyPI as a module; it ships in a llama.cpp
checkout and in the llama-cpp-python source distribution (`vendor/llama.cpp/`). sleb finds
it through `SLEB_LLAMA_CPP` (that folder) or on PATH, and runs it with this Python (its own
`gguf-py` beside it; its requirements, e.g. sentencepiece, must be importable). `q4_k_m`
is quantised from the converter's f16 file by llama.cpp's `llama_model_quantize`, through
the `llama_cpp` binding or a `llama-quantize` program on PATH.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlebError
from .verify import llamacpp_available

log = logging.getLogger(__name__)

ENV = "SLEB_LLAMA_CPP"
SCRIPT = "convert_hf_to_gguf.py"
GGUF_TYPES = ("f16", "q8_0", "q4_k_m")
HOW = (f"get llama.cpp's converter (e.g. `pip download --no-deps --no-binary :all: llama-cpp-python` and unpack it, "
       f"or clone ggml-org/llama.cpp), install its requirements/requirements-convert_hf_to_gguf.txt, and set "
       f"{ENV} to the folder holding {SCRIPT} (vendor/llama.cpp in the llama-cpp-python source)")


@dataclass
class Converter:
    """llama.cpp's converter script, and how to quantise (`llama_cpp` binding, a program path, or None)."""

    script: Path
    quantize: str | None


def find_converter() -> Converter | None:
    """The converter from `SLEB_LLAMA_CPP` or PATH, or None."""
    folder = os.environ.get(ENV)
    candidates = [Path(folder) / SCRIPT] if folder else []
    candidates += [Path(p) for p in (shutil.which(SCRIPT), shutil.which(SCRIPT.removesuffix(".py"))) if p]
    script = next((c for c in candidates if c.is_file()), None)
    if script is None:
        return None
    quantize = "llama_cpp" if llamacpp_available() else shutil.which("llama-quantize")
    return Converter(script, quantize)


def require_converter(gguf_type: str) -> Converter:
    """The converter able to write `gguf_type`, or a SlebError saying how to get it."""
    if gguf_type not in GGUF_TYPES:
        raise SlebError(f"Unknown --gguf-type {gguf_type!r}; choose one of: {', '.join(GGUF_TYPES)}.")
    converter = find_converter()
    if converter is None:
        where = f"{ENV}={os.environ[ENV]} has no {SCRIPT}" if os.environ.get(ENV) else f"{ENV} is not set"
        raise SlebError(f"--gguf on a safetensors model needs llama.cpp's {SCRIPT}, and none was found ({where}). "
                        f"To get it: {HOW}. Or prune a .gguf file instead, which needs no converter.")
    if gguf_type == "q4_k_m" and converter.quantize is None:
        raise SlebError("--gguf-type q4_k_m needs llama.cpp's quantiser: install llama-cpp-python (see docs/gguf.md) "
                        "or put llama-quantize on PATH; or use --gguf-type f16 or q8_0.")
    return converter


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise SlebError(f"{what} failed (exit {done.returncode}):\n{tail}")


def _quantize(converter: Converter, src: Path, dst: Path, gguf_type: str) -> None:
    if converter.quantize == "llama_cpp":
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}")
        if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
            raise SlebError(f"llama.cpp's quantiser could not write {gguf_type} from {src.name}.")
    else:
        _run([converter.quantize, str(src), str(dst), gguf_type.upper()], "llama-quantize")


def convert_checkpoint(folder: str | os.PathLike, out_path: str | os.PathLike, gguf_type: str = "f16",
                       converter: Converter | None = None) -> dict:
    """Write the checkpoint `folder` as a `gguf_type` GGUF at `out_path` (temporary names, then a rename)."""
    converter = converter or require_converter(gguf_type)
    out = Path(out_path)
    first = out.with_name(f".{out.name}.f16-{os.getpid()}") if gguf_type == "q4_k_m" else None
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    outtype = "f16" if first is not None else gguf_type
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(converter.script.parent / "gguf-py"), os.environ.get("PYTHONPATH")) if p)}
    try:
        _run([sys.executable, str(converter.script), str(folder), "--outfile", str(first or tmp),
              "--outtype", outtype], f"llama.cpp's {SCRIPT}", env)
        if first is not None:
            _quantize(converter, first, tmp, gguf_type)
        os.replace(tmp, out)
    finally:
        for path in (first, tmp):
            if path is not None:
                path.unlink(missing_ok=True)
    log.info("Converted %s to %s (%s, %s bytes) with %s", folder, out, gguf_type, f"{out.stat().st_size:,}",
             converter.script)
    return {"file": out.name, "bytes": out.stat().st_size, "gguf_type": gguf_type,
            "converter": str(converter.script), "quantizer": converter.quantize if first is not None else None}
