"""The resumable distillation state belongs to one pair of models and disappears when healing completes.

Two tiny Llamas with the same tokenizer and the same removed blocks but different weights are
healed one after the other in one sleb cache (`heal_model`, as the zoo and `sleb prune --heal`
call it, and `cached_heal`, as the app calls it). The oracle is each model healed alone in a
fresh cache: the results must be equal, and differ from the unhealed pruned model.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleb.errors import SlebError
from sleb.healing import DistillSpec, HealSpec, cached_heal, heal_model
from sleb.loading import cache_dir, load_model
from sleb.removal import remove_blocks, save_checkpoint
from tests.conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

REMOVED = [2, 3]
SPEC = HealSpec(methods=("distill",), seqlen=32, heldout=2,
                distill=DistillSpec(tokens=32 * 6, batch_windows=2, micro_batch=1, lora_rank=4, dtype="fp32",
                                    save_every=1, lm_weight=0.0))


@pytest.fixture
def two_models(tiny_model_dir, tmp_path):
    """The session's tiny Llama and another one (other seed) with the same tokenizer."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    other = tiny_llama(6, len(tok), seed=5)
    other.config.pad_token_id, other.config.bos_token_id, other.config.eos_token_id = 0, 1, 2
    return [str(tiny_model_dir), str(save_checkpoint(other, tok, tmp_path / "other"))]


def states() -> list:
    return sorted(cache_dir().rglob("distill-*.pt"))


def heal_alone(model: str, **kwargs):
    dense, tok, _ = load_model(model, device="cpu")
    return heal_model(dense, remove_blocks(copy.deepcopy(dense), REMOVED), tok, REMOVED, SPEC, progress=False,
                      **kwargs)


def fresh_cache(monkeypatch, tmp_path, name: str) -> None:
    monkeypatch.setenv("SLEB_CACHE", str(tmp_path / name))


def assert_same_weights(a, b) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_an_interrupted_state_is_resumed_only_by_its_own_models(two_models, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    first, second = two_models
    with pytest.raises(SlebError, match="stopped at step 1 of 3"):
        heal_alone(first, stop_after=1)
    assert len(states()) == 1
    healed_second, record = heal_alone(second)  # same tokenizer, blocks and settings: another model
    assert record["distill"]["tokens_trained"] == 32 * 6 and len(record["distill"]["loss_first"]) == 1
    assert len(states()) == 1  # the first model's interrupted state is still there, its own is gone
    healed_first, _ = heal_alone(first)
    assert "Resuming distillation at step 1 of 3" in caplog.text and caplog.text.count("Resuming") == 1
    assert states() == []
    fresh_cache(monkeypatch, tmp_path, "fresh")
    for model, healed in zip(two_models, (healed_first, healed_second), strict=True):
        alone, _ = heal_alone(model)
        assert_same_weights(healed, alone)
        plain = remove_blocks(load_model(model, device="cpu")[0], REMOVED)
        assert not torch.equal(alone.model.layers[1].mlp.down_proj.weight, plain.model.layers[1].mlp.down_proj.weight)
    assert states() == []


def test_cached_heal_of_two_models_trains_each_and_leaves_no_state(two_models, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    folders = [cached_heal(m, REMOVED, SPEC, device="cpu") for m in two_models]
    assert folders[0] != folders[1] and states() == [] and "Resuming" not in caplog.text
    fresh_cache(monkeypatch, tmp_path, "fresh")
    for model, folder in zip(two_models, folders, strict=True):
        alone = cached_heal(model, REMOVED, SPEC, device="cpu")
        assert alone != folder
        assert_same_weights(AutoModelForCausalLM.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(alone))
    assert states() == []
