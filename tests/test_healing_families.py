"""Healing on every family the surgery tests cover: GPT-2's Conv1D, the fold decided up front, dropout, reloads.

Families: every one of tests/test_architectures.py and tests/test_surgery.py (Llama, Mistral, Qwen2/3, Gemma 2/3
and Gemma 3 with its vision tower, Phi-3, OPT, GPT-2, GPT-NeoX, GPT-Neo, BLOOM, Falcon, Qwen2/3-MoE, Mixtral,
DeepSeek-V3, GLM-4-MoE, Llama 4, RecurrentGemma).

Tiny random models with a real (small) tokenizer. The oracles are independent of the healing code:
least squares from `torch.linalg.lstsq` and hidden states from `output_hidden_states`, a LoRA merge
done by hand and peft's unmerged forward, a run on the same weights with dropout configured off,
and the logits of the saved folder reloaded with plain transformers.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from sleb.blocks import find_blocks
from sleb.errors import SlebError
from sleb.healing import DistillSpec, HealSpec, distill, fit_linear, heal_model, residual_writer
from sleb.removal import remove_blocks, save_checkpoint
from tests import test_architectures as arch
from tests import test_surgery as surgery
from tests.conftest import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# family -> (config factory, removed blocks)
FAMILIES = {name: (factory, arch.REMOVED) for name, factory in arch.FAMILIES.items()}
FAMILIES.update({name: case for name, case in surgery.CASES.items() if not name.startswith(("llama-", "gpt2-"))})
# Post-norms after attention and MLP (Gemma), or a routed MLP after the attention whose output it reads (the
# block before the cut is MoE): no projection writes only to the residual stream, so the fold cannot apply.
NO_FOLD = {"gemma2", "gemma3", "gemma3-conditional-generation", "qwen2_moe-mlp_only_layers", "mixtral"}
# KL only: the next-token loss would pull a random model away from its teacher.
SPEC = HealSpec(methods=("linear", "distill"), seqlen=32, heldout=2, linear_tokens=32 * 8,
                distill=DistillSpec(tokens=32 * 8, batch_windows=2, micro_batch=1, lr=3e-3, lora_rank=4,
                                    lora_alpha=8, dtype="fp32", save_every=2, lm_weight=0.0))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def build(family: str, vocab: int, **overrides):
    config = FAMILIES[family][0]()
    config.get_text_config().vocab_size = vocab
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def tokens(vocab: int, n: int = 16, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, x):
    return model(input_ids=x, use_cache=False).logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heal_every_family_and_reload_it_with_plain_transformers(family, tokenizer, tmp_path, caplog):
    dense = build(family, len(tokenizer))
    removed = FAMILIES[family][1]
    pruned = remove_blocks(copy.deepcopy(dense), removed)
    unhealed = copy.deepcopy(pruned)
    with caplog.at_level(logging.WARNING):
        healed, record = heal_model(dense, pruned, tokenizer, removed, SPEC, progress=False)
    if family in NO_FOLD:  # decided up front, said in the log and the record
        assert record["methods"] == ["distill"] and "cannot be applied" in record["linear_skipped"]
        assert "distillation alone" in caplog.text and "linear" not in record
    else:
        assert record["methods"] == ["linear", "distill"] and "linear_skipped" not in record
        assert all(c["error_after"] < c["error_before"] for c in record["linear"]["cuts"] if "skipped" not in c)
    assert record["distill"]["finished"] and record["distill"]["steps_done"] == 4
    out = save_checkpoint(healed, tokenizer, tmp_path / "healed", {"format": "sleb/1", "healing": record})
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(reloaded) is type(dense) and len(find_blocks(reloaded).blocks) == len(find_blocks(unhealed).blocks)
    x = tokens(len(tokenizer), 2)
    torch.testing.assert_close(logits(reloaded.eval(), x), logits(healed, x), rtol=1e-5, atol=1e-5)
    assert not any("lora" in n for n in reloaded.state_dict())
    assert not torch.allclose(logits(reloaded, x), logits(unhealed, x), atol=1e-4)  # healing changed the model


def test_gpt2_fold_into_the_conv1d_equals_least_squares(tokenizer):
    dense = build("gpt2", len(tokenizer))
    removed = [2, 3]
    pruned = remove_blocks(copy.deepcopy(dense), removed)
    x = tokens(len(tokenizer))
    block = pruned.transformer.h[1]
    assert isinstance(block.mlp.c_proj, Conv1D) and residual_writer(pruned, 1) is block.mlp.c_proj
    with torch.no_grad():
        target = dense(input_ids=x, output_hidden_states=True).hidden_states[4].reshape(-1, 32).double()
        seen = {}
        handle = block.mlp.c_proj.register_forward_hook(lambda m, a, o: seen.update(m=o))
        before = pruned(input_ids=x, output_hidden_states=True).hidden_states[2].reshape(-1, 32).double()
        handle.remove()
    m = seen["m"].reshape(-1, 32).double()
    r = target - before + m
    t = torch.linalg.lstsq(m, r).solution
    healed = copy.deepcopy(pruned)
    report = fit_linear(dense, healed, removed, x, ridge=0.0, batch_size=5, progress=False)
    new = healed.transformer.h[1].mlp.c_proj
    # Conv1D computes x W + b with W stored (in, out): the fold is W T, not T^T W.
    torch.testing.assert_close(new.weight.double(), block.mlp.c_proj.weight.double() @ t, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(new.bias.double(), block.mlp.c_proj.bias.double() @ t, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        after = healed(input_ids=x, output_hidden_states=True).hidden_states[2].reshape(-1, 32).double()
    actual = float((after - target).pow(2).sum())
    assert actual < 0.9 * float((before - target).pow(2).sum())
    assert report["cuts"][0]["error_after"] == pytest.approx(actual, rel=1e-3)


def test_gpt2_lora_merge_equals_peft_unmerged_and_a_merge_by_hand(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    dense = build("gpt2", len(tokenizer))
    pruned = remove_blocks(copy.deepcopy(dense), [2, 3])
    spec = SPEC.distill
    healed, report = distill(copy.deepcopy(pruned), dense, tokens(len(tokenizer)), spec, tmp_path / "s.pt",
                             progress=False)
    trained = torch.load(tmp_path / "s.pt", weights_only=False)["trainable"]
    convs = [n for n, m in pruned.named_modules() if isinstance(m, Conv1D)]
    assert len(convs) == 4 * 3 and sum(".lora_A." in n for n in trained) == len(convs)  # every Conv1D trained
    scale = spec.lora_alpha / spec.lora_rank
    for name in convs:  # Conv1D stores W as (in, out): the update B A is added transposed
        a, b = (trained[f"base_model.model.{name}.lora_{k}.default.weight"] for k in "AB")
        merged = healed.get_submodule(name).weight
        torch.testing.assert_close(merged, pruned.get_submodule(name).weight + scale * (b @ a).T)
    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, target_modules=convs, fan_in_fan_out=True)
    unmerged = get_peft_model(copy.deepcopy(pruned), config)
    unmerged.load_state_dict(trained, strict=False)
    x = tokens(len(tokenizer), 2)
    torch.testing.assert_close(logits(healed, x), logits(unmerged.eval(), x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,off", [("gpt2", {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
                                        ("opt", {"dropout": 0.0, "attention_dropout": 0.0})])
def test_resumed_distillation_with_dropout_equals_an_uninterrupted_one(family, off, tokenizer, tmp_path):
    on = {k: 0.2 for k in off}
    dense = build(family, len(tokenizer), **on)
    pruned = remove_blocks(copy.deepcopy(dense), [2, 3])
    x, spec = tokens(len(tokenizer)), SPEC.distill
    full, _ = distill(copy.deepcopy(pruned), dense, x, spec, tmp_path / "a.pt", progress=False)
    _, first = distill(copy.deepcopy(pruned), dense, x, spec, tmp_path / "b.pt", progress=False, stop_after=3)
    assert not first["finished"]
    torch.manual_seed(123)  # whatever the generators did in between
    resumed, second = distill(copy.deepcopy(pruned), dense, x, spec, tmp_path / "b.pt", progress=False)
    assert second["finished"] and second["steps_done"] == second["steps"] > 3
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # Dropout is off in training: the same weights configured without dropout train to the same result.
    plain_dense, plain_pruned = build(family, len(tokenizer), **off), copy.deepcopy(pruned)
    plain_dense.load_state_dict(dense.state_dict())
    for module in plain_pruned.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    plain, _ = distill(plain_pruned, plain_dense, x, spec, progress=False)
    for (name, a), (_, b) in zip(full.state_dict().items(), plain.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_gemma_linear_alone_is_refused_before_any_data_is_read(tokenizer, tmp_path):
    dense = build("gemma3", len(tokenizer))
    pruned = remove_blocks(copy.deepcopy(dense), arch.REMOVED)
    spec = HealSpec(methods=("linear",), source=str(tmp_path / "missing.txt"))  # reading it would fail differently
    with pytest.raises(SlebError, match="cannot be applied.*--method distill"):
        heal_model(dense, pruned, tokenizer, arch.REMOVED, spec, progress=False)


def test_cli_heal_of_gemma_says_the_fold_does_not_apply(tokenizer, tmp_path, caplog):
    from sleb.cli import main

    dense = build("gemma2", len(tokenizer))
    save_checkpoint(dense, tokenizer, tmp_path / "dense")
    record = {"format": "sleb/1", "model_argument": str(tmp_path / "dense"), "base_model": str(tmp_path / "dense"),
              "removal_order": arch.REMOVED, "removed": arch.REMOVED, "dtype": "float32"}
    pruned = save_checkpoint(remove_blocks(dense, arch.REMOVED), tokenizer, tmp_path / "pruned", record)
    args = ["heal", str(pruned), "--device", "cpu", "-q", "--heal-seqlen", "32", "--heal-tokens", "64"]
    assert main([*args, "--out", str(tmp_path / "linear"), "--method", "linear"]) == 2
    assert "--method distill" in caplog.text and not (tmp_path / "linear").exists()
    assert main([*args, "--out", str(tmp_path / "healed")]) == 0  # the default, linear+distill
    healing = json.loads((tmp_path / "healed" / "sleb.json").read_text())["healing"]
    assert healing["methods"] == ["distill"] and "cannot be applied" in healing["linear_skipped"]
    assert healing["distill"]["tokens_trained"] == 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_projection_whose_output_also_feeds_the_mlp_is_not_a_residual_writer(dtype, tokenizer):
    dense = build("qwen2_moe-mlp_only_layers", len(tokenizer)).to(dtype)
    block = dense.model.layers[0]
    x = tokens(len(tokenizer), 1, 16)
    seen = []
    hooks = [block.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))]
    with torch.no_grad():
        dense(input_ids=x)
        hooks.append(block.self_attn.o_proj.register_forward_hook(lambda m, a, o: o + 1.0))
        dense(input_ids=x)
    for h in hooks:
        h.remove()
    assert not torch.allclose(seen[0], seen[1])  # independent evidence: o_proj's output reaches the MLP
    with pytest.raises(SlebError, match="cannot be applied"):
        residual_writer(dense, 0)
    llama = build("llama", len(tokenizer)).to(dtype)  # a writer added last, and only to the residual stream, passes
    before = {n: p.clone() for n, p in llama.named_parameters()}
    assert residual_writer(llama, 0) is llama.model.layers[0].mlp.down_proj
    assert all(p.dtype == dtype and torch.equal(p, before[n]) for n, p in llama.named_parameters())  # left as found
