"""Healing: the linear fold against closed-form least squares, distillation, resume, checkpoints, bad input.

Tiny random Llama and GPT-NeoX models; every expected value is computed here independently
(hidden states from `output_hidden_states`, least squares from `torch.linalg.lstsq`, logits
of a model reloaded with plain transformers).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

from sleb.errors import SlebError
from sleb.healing import DistillSpec, HealSpec, distill, fit_linear, heal, residual_writer
from sleb.healing.distill import heldout_scores
from sleb.healing.linear import cuts
from sleb.removal import remove_blocks, save_checkpoint

VOCAB = 96
REMOVED = [2, 3]  # one cut: blocks 2-3, folded into block 1


def build(family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    else:
        config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                               num_attention_heads=4, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config).eval()


def ids(n: int = 16, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def hidden(model, x, index):
    return model(input_ids=x, output_hidden_states=True).hidden_states[index]


def writer_of(family, block):
    return block.mlp.down_proj if family == "llama" else block.mlp.dense_4h_to_h


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_residual_writer_is_the_mlp_output_projection(family):
    model = build(family)
    assert residual_writer(model, 1, ids(2)) is writer_of(family, model.gpt_neox.layers[1] if family == "gpt_neox"
                                                           else model.model.layers[1])


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_linear_fold_equals_least_squares_and_reduces_the_error_at_the_cut(family):
    dense = build(family)
    pruned = remove_blocks(copy.deepcopy(dense), REMOVED)
    x = ids()
    target = hidden(dense, x, 4).reshape(-1, 32).double()  # dense state after block 3
    before = hidden(pruned, x, 2).reshape(-1, 32).double()  # pruned state after kept block 1
    # Independent closed form: M = output of block 1's MLP projection, R = target - (rest of block 1's output).
    block = pruned.model.layers[1] if family == "llama" else pruned.gpt_neox.layers[1]
    seen = {}
    handle = writer_of(family, block).register_forward_hook(lambda m, a, o: seen.update(m=o))
    with torch.no_grad():
        pruned(input_ids=x)
    handle.remove()
    m = seen["m"].reshape(-1, 32).double()
    r = target - before + m
    has_bias = writer_of(family, block).bias is not None
    t = torch.linalg.lstsq(m, r).solution
    healed = copy.deepcopy(pruned)
    report = fit_linear(dense, healed, REMOVED, x, ridge=0.0, batch_size=5, progress=False)
    w = writer_of(family, block).weight.double()
    new = writer_of(family, healed.model.layers[1] if family == "llama" else healed.gpt_neox.layers[1])
    torch.testing.assert_close(new.weight.double(), t.T @ w, rtol=1e-3, atol=1e-4)
    if has_bias:
        torch.testing.assert_close(new.bias.double(), writer_of(family, block).bias.double() @ t, rtol=1e-3,
                                   atol=1e-4)
    after = hidden(healed, x, 2).reshape(-1, 32).double()
    err_before, err_after = float((before - target).pow(2).sum()), float((after - target).pow(2).sum())
    assert err_after < 0.9 * err_before
    assert err_after == pytest.approx(float((m @ t - r).pow(2).sum()), rel=1e-3)
    assert report["cuts"][0]["error_after"] == pytest.approx(err_after, rel=1e-3)


def test_cut_at_the_start_is_skipped_and_later_cuts_see_earlier_fits():
    dense = build("llama")
    pruned = remove_blocks(copy.deepcopy(dense), [0, 2])
    report = fit_linear(dense, pruned, [0, 2], ids(), ridge=1e-3, progress=False)
    assert report["cuts"][0]["skipped"]
    assert report["cuts"][1]["block"] == 1
    with torch.no_grad():  # kept block 1 is pruned block 0: its output now approximates dense block 2's
        err = (hidden(pruned, ids(), 1) - hidden(dense, ids(), 3)).pow(2).sum()
        plain = (hidden(remove_blocks(copy.deepcopy(dense), [0, 2]), ids(), 1) - hidden(dense, ids(), 3)).pow(2).sum()
    assert err < plain


def kl_to(teacher, student, x):
    with torch.no_grad():
        s, t = student(input_ids=x).logits, teacher(input_ids=x).logits
    return float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"))


# KL only: the windows below are random tokens, whose next-token loss would only add noise.
SPEC = DistillSpec(tokens=24 * 4 * 6, batch_windows=4, micro_batch=2, lr=3e-3, lora_rank=4, lora_alpha=8,
                   dtype="fp32", seed=3, save_every=2, lm_weight=0.0)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_distill_lowers_kl_on_held_out_tokens(family):
    dense = build(family)
    pruned = remove_blocks(copy.deepcopy(dense), REMOVED)
    held = ids(4, seed=9)
    before = kl_to(dense, pruned, held)
    healed, report = distill(copy.deepcopy(pruned), dense, ids(16), SPEC, progress=False)
    assert report["finished"] and report["steps"] == 6
    assert type(healed) is type(pruned)  # LoRA merged away: a plain model again
    assert not any("lora" in n for n, _ in healed.named_parameters())
    assert kl_to(dense, healed, held) < 0.9 * before
    assert heldout_scores(healed, dense, held)["kl"] < heldout_scores(pruned, dense, held)["kl"]


def test_resumed_distillation_equals_an_uninterrupted_run(tmp_path):
    dense = build("llama")
    pruned = remove_blocks(copy.deepcopy(dense), REMOVED)
    full, _ = distill(copy.deepcopy(pruned), dense, ids(16), SPEC, tmp_path / "a.pt", progress=False)
    assert kl_to(dense, full, ids(4, seed=9)) < 0.9 * kl_to(dense, pruned, ids(4, seed=9))  # it trained
    _, first = distill(copy.deepcopy(pruned), dense, ids(16), SPEC, tmp_path / "b.pt", progress=False, stop_after=3)
    assert not first["finished"] and (tmp_path / "b.pt").is_file()
    # Three more steps finish only a run that picks up at step 3 (a restart would stop at 3 of 6).
    resumed, second = distill(copy.deepcopy(pruned), dense, ids(16), SPEC, tmp_path / "b.pt", progress=False,
                              stop_after=3)
    assert second["finished"] and second["steps_done"] == 6
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    other, _ = distill(copy.deepcopy(pruned), dense, ids(16), SPEC.__class__(**{**SPEC.__dict__, "seed": 4}),
                       progress=False)
    assert not torch.equal(other.model.layers[0].mlp.down_proj.weight, full.model.layers[0].mlp.down_proj.weight)


def test_full_block_training_changes_only_those_blocks():
    dense = build("llama")
    pruned = remove_blocks(copy.deepcopy(dense), REMOVED)
    spec = DistillSpec(**{**SPEC.__dict__, "train_blocks": [1]})
    healed, report = distill(copy.deepcopy(pruned), dense, ids(16), spec, progress=False)
    assert report["method"] == "full"
    assert torch.equal(healed.model.layers[0].mlp.up_proj.weight, pruned.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(healed.model.layers[1].mlp.up_proj.weight, pruned.model.layers[1].mlp.up_proj.weight)


@pytest.fixture
def pruned_dir(tiny_model_dir, tmp_path):
    from sleb.loading import load_model

    model, tok, source = load_model(str(tiny_model_dir), device="cpu")
    remove_blocks(model, [2, 3])
    record = {"format": "sleb/1", "model_argument": str(tiny_model_dir), "base_model": str(tiny_model_dir),
              "removal_order": [3, 2], "removed": [2, 3], "dtype": "float32"}
    return save_checkpoint(model, tok, tmp_path / "pruned", record)


def own_nll(model, windows: torch.Tensor) -> float:
    """Mean next-token NLL of `model` on `windows`, from a plain forward."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits.float()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten()))


def assert_scored(out, dense_dir, removed: list[int], seqlen: int, heldout: int):
    """The checkpoint in `out`, reloaded with plain transformers, is the model its record scored (held-out NLL
    before: the physically pruned model's; after: the reloaded one's). Returns (record, reloaded, pruned, dense)."""
    from transformers import AutoTokenizer

    from sleb.healing import heal_data

    record = json.loads((out / "sleb.json").read_text())["healing"]
    dense = AutoModelForCausalLM.from_pretrained(dense_dir).eval()
    plain = remove_blocks(copy.deepcopy(dense), removed)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(plain) and set(reloaded.state_dict()) == set(plain.state_dict())
    held = heal_data(AutoTokenizer.from_pretrained(dense_dir), "c4", seqlen, heldout, progress=False).heldout
    assert record["heldout_before"]["nll"] == pytest.approx(own_nll(plain, held), rel=1e-4)
    assert record["heldout_after"]["nll"] == pytest.approx(own_nll(reloaded, held), rel=1e-4)
    assert record["heldout_after"]["nll"] != record["heldout_before"]["nll"]
    return record, reloaded, plain, dense


def changed(model, plain) -> set[str]:
    ref = plain.state_dict()
    return {name for name, value in model.state_dict().items() if not torch.equal(value, ref[name])}


def test_heal_writes_a_plain_checkpoint_that_is_the_healed_model(pruned_dir, tmp_path, tiny_model_dir):
    spec = HealSpec(methods=("linear", "distill"), seqlen=32, heldout=2, linear_tokens=32 * 8,
                    distill=DistillSpec(tokens=32 * 8, batch_windows=2, micro_batch=1, lora_rank=4, dtype="fp32",
                                        lm_weight=0.0))
    out = heal(pruned_dir, tmp_path / "healed", spec, device="cpu", progress=False)
    record, reloaded, plain, _ = assert_scored(out, tiny_model_dir, [2, 3], 32, 2)
    assert record["methods"] == ["linear", "distill"] and reloaded.config.num_hidden_layers == 4
    assert record["data"]["data"].endswith("[1100:1480]")
    assert record["distill"]["tokens_trained"] == 32 * 8 and record["distill"]["steps_done"] == 4
    assert record["linear"]["cuts"][0]["block"] == 1
    # LoRA trained every Linear of the blocks (merged into their weights); nothing else moved.
    linears = {f"{n}.weight" for n, m in reloaded.named_modules() if isinstance(m, torch.nn.Linear)
               and n.startswith("model.layers.")}
    assert changed(reloaded, plain) == linears
    # the distillation lowered the held-out KL the fold left (both scored against one teacher reference)
    assert record["heldout_after"]["kl"] < 0.95 * record["heldout_after_linear"]["kl"]
    assert not list(tmp_path.glob(".healed*"))  # nothing half-written left beside it


def test_heal_without_record_asks_for_the_dense_model(pruned_dir, tmp_path):
    (pruned_dir / "sleb.json").unlink()
    with pytest.raises(SlebError, match="--dense"):
        heal(pruned_dir, tmp_path / "out", device="cpu", progress=False)


def test_heal_refuses_a_dense_model_that_does_not_match(pruned_dir, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from tests.conftest import tiny_llama

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    save_checkpoint(tiny_llama(6, len(tok), seed=5), tok, tmp_path / "other")
    with pytest.raises(SlebError, match="Refusing"):
        heal(pruned_dir, tmp_path / "out", dense=str(tmp_path / "other"), device="cpu", progress=False)
    with pytest.raises(SlebError, match="Refusing"):  # right model, wrong blocks
        heal(pruned_dir, tmp_path / "out", dense=str(tiny_model_dir), removed=[1, 2], device="cpu", progress=False)
    assert not (tmp_path / "out").exists()


def test_budget_larger_than_pool_warns_with_repeated_tokens(caplog):
    from sleb.healing.text import budget_windows

    assert budget_windows(10, 15 * 32, 32) == (15, 5 * 32)
    assert "160 tokens repeat" in caplog.text


def test_cached_heal_makes_the_checkpoint_once_with_the_least_squares_fold(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from sleb.healing import cached_heal, heal_data

    monkeypatch.setenv("SLEB_CACHE", str(tmp_path / "cache"))
    spec = HealSpec(methods=("linear",), seqlen=32, heldout=2, linear_tokens=64, ridge=0.0)
    folder = cached_heal(str(tiny_model_dir), [2, 3], spec, device="cpu")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert cached_heal(str(tiny_model_dir), [3, 2], spec, device="cpu") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 4
    assert json.loads((folder / "sleb.json").read_text())["healing"]["linear"]["cuts"][0]["cut"] == [2, 3]
    # Independently: the closed-form least-squares map on the two healing windows, folded into block 1.
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    plain = remove_blocks(copy.deepcopy(dense), [2, 3])
    x = heal_data(AutoTokenizer.from_pretrained(tiny_model_dir), "c4", 32, 2, progress=False).train[:2]
    writer = plain.model.layers[1].mlp.down_proj
    seen = {}
    handle = writer.register_forward_hook(lambda m, a, o: seen.update(m=o))
    before = hidden(plain, x, 2).reshape(-1, 32).double()
    handle.remove()
    m = seen["m"].reshape(-1, 32).double()
    t = torch.linalg.lstsq(m, hidden(dense, x, 4).reshape(-1, 32).double() - before + m).solution
    torch.testing.assert_close(model.model.layers[1].mlp.down_proj.weight.double(), t.T @ writer.weight.double(),
                               rtol=1e-3, atol=1e-4)
    for name, value in plain.state_dict().items():
        if name != "model.layers.1.mlp.down_proj.weight":
            assert torch.equal(model.state_dict()[name], value), name


def test_cli_heal_without_record_exits_with_the_fix(pruned_dir, tmp_path, caplog):
    from sleb.cli import main

    (pruned_dir / "sleb.json").unlink()
    assert main(["heal", str(pruned_dir), "--out", str(tmp_path / "out"), "--device", "cpu", "-q"]) == 2
    assert "--dense MODEL" in caplog.text


def test_cli_prune_with_heal_saves_the_healed_checkpoint(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from sleb.cli import main
    from sleb.healing import heal_data

    out = tmp_path / "healed"
    assert main(["prune", str(tiny_model_dir), "--num-remove", "2", "--nsamples", "2", "--seqlen", "16",
                 "--device", "cpu", "-q", "--heal", "linear", "--heal-seqlen", "32", "--linear-tokens", "64",
                 "--out", str(out)]) == 0
    saved = json.loads((out / "sleb.json").read_text())
    assert saved["healing"]["methods"] == ["linear"] and saved["healing"]["dense_model"] == str(tiny_model_dir)
    record, reloaded, plain, dense = assert_scored(out, tiny_model_dir, saved["removed"], 32, HealSpec().heldout)
    assert reloaded.config.num_hidden_layers == 4
    runs = cuts(saved["removed"])
    assert [c["cut"] for c in record["linear"]["cuts"]] == [[a, b] for a, b in runs]
    kept = [i for i in range(6) if i not in saved["removed"]]
    assert changed(reloaded, plain) == {f"model.layers.{kept.index(a - 1)}.mlp.down_proj.weight" for a, _ in runs}
    # On the fitting windows the state after the first cut is closer to the dense state after it.
    x = heal_data(AutoTokenizer.from_pretrained(tiny_model_dir), "c4", 32, HealSpec().heldout, progress=False).train[:2]
    first, last = runs[0]
    p = kept.index(first - 1)
    target = hidden(dense, x, last + 1)
    assert (hidden(reloaded, x, p + 1) - target).pow(2).sum() < 0.99 * (hidden(plain, x, p + 1) - target).pow(2).sum()


def test_distill_loss_adds_the_next_token_loss_at_its_weight():
    from sleb.healing.distill import distill_loss

    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 7, 11, generator=gen), torch.randn(2, 7, 11, generator=gen)
    x = torch.randint(0, 11, (2, 7), generator=gen)
    log_s, log_t = student.log_softmax(-1), teacher.log_softmax(-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    nll = -log_s[:, :-1].gather(-1, x[:, 1:, None]).mean()  # next-token loss: position t predicts token t+1
    torch.testing.assert_close(distill_loss(student, teacher, x, 1.0, 0.0), kl)
    torch.testing.assert_close(distill_loss(student, teacher, x, 1.0, 0.5), kl + 0.5 * nll)
    torch.testing.assert_close(distill_loss(student, student, x, 1.0, 2.0), 2.0 * nll)
