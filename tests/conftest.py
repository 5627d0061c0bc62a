"""Shared fixtures: offline Hub, a tiny random Llama, calibration windows."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


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


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own search-state cache; the dequantized default model cache is shared."""
    monkeypatch.setenv("SLEB_STATE_DIR", str(tmp_path / "state"))


DATA_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


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
