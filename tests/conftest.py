"""Shared fixtures: offline Hub, an isolated sleb cache, a tiny random Llama, calibration windows."""

import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# The dequantized default model (about 30 s to make) is shared with the user's cache; nothing else is.
SHARED_MODELS = Path(os.environ.get("SLEB_CACHE", Path.home() / ".cache" / "sleb")) / "models"


def tiny_llama(num_layers: int = 6, vocab: int = 128, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def windows():
    return torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))


def _isolated_cache(root: Path, mp: pytest.MonkeyPatch) -> None:
    """A fresh sleb cache at `root` whose `models/` links to the shared dequantized models."""
    root.mkdir(parents=True, exist_ok=True)
    SHARED_MODELS.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(SHARED_MODELS, target_is_directory=True)
    mp.setenv("SLEB_CACHE", str(root))
    mp.delenv("SLEB_STATE_DIR", raising=False)


@pytest.fixture(scope="session", autouse=True)
def offline(tmp_path_factory):
    """The whole session runs offline, whatever the shell says, with a cache of its own.

    The libraries read the offline switches when imported, so their flags are patched too.
    """
    import datasets.config
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        for name, value in OFFLINE.items():
            mp.setenv(name, value)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        _isolated_cache(tmp_path_factory.mktemp("session") / "sleb-cache", mp)
        yield


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own sleb cache (search state, cached results); dequantized models are shared."""
    _isolated_cache(tmp_path_factory.mktemp("test") / "sleb-cache", monkeypatch)


DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def train_tokenizer(vocab: int = 300):
    """A byte-level BPE tokenizer trained on a little C4 text, so tiny models read real text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = (DATA_DIR / "c4-sample" / "c4_sample.jsonl").read_text().splitlines()[:200]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama (6 blocks) with a real tokenizer: a local model folder."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tokenizer = train_tokenizer()
    model = tiny_llama(num_layers=6, vocab=len(tokenizer))
    model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = 0, 1, 2
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the machine is shared): `pytestmark = usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_speed_figures(figures: dict, dense, removed: int, repeats: int, prefill_samples: int,
                        new_tokens: int) -> None:
    """Speed figures against the dense model's own parameters and the raw timing samples they summarise.

    `dense` is a plain in-memory model whose blocks all have the same size; `removed` blocks were pruned.
    """
    import statistics

    from sleb.blocks import find_blocks

    blocks = find_blocks(dense).blocks
    block = sum(p.numel() for p in blocks[0].parameters())
    block_matmul = sum(p.numel() for p in blocks[0].parameters() if p.dim() == 2)
    head = dense.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in dense.parameters())
    n = len(blocks)
    assert (figures["dense_blocks"], figures["pruned_blocks"]) == (n, n - removed)
    assert (figures["dense_params"], figures["pruned_params"]) == (total, total - removed * block)
    assert figures["ideal_speedup_params"] == pytest.approx((n * block_matmul + head)
                                                            / ((n - removed) * block_matmul + head))
    runs = figures["runs"]
    for name in ("dense", "pruned"):
        assert len(runs[name]["prefill_s"]) == repeats * prefill_samples
        assert len(runs[name]["decode_b1_step_s"]) == repeats * (new_tokens - 1)
        assert all(0 < t < float("inf") for samples in runs[name].values() for t in samples)
    median = {name: {k: statistics.median(v) for k, v in runs[name].items()} for name in runs}
    assert figures["speedup_prefill"] == pytest.approx(median["dense"]["prefill_s"] / median["pruned"]["prefill_s"])
    assert figures["speedup_decode_b1"] == pytest.approx(median["dense"]["decode_b1_step_s"]
                                                         / median["pruned"]["decode_b1_step_s"])


def zoo_dry_run(root: Path, text: str) -> tuple[Path, Path, list[str], int]:
    """`python zoo/publish.py --dry-run` of the manifest `text` in `root`, with its own sleb state folder:
    `(manifest, out, argv, exit status)`."""
    from zoo import publish

    manifest = root / "manifest.yaml"
    manifest.write_text(text)
    out = root / "out"
    argv = ["--manifest", str(manifest), "--dry-run", "--out", str(out), "--cache", str(root / "cache")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEB_STATE_DIR", str(root / "state"))
        return manifest, out, argv, publish.main(argv)
