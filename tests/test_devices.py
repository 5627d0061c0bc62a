"""Inputs go to the device of the module that consumes them, checked without a GPU.

Two stand-ins for a second device:

- accelerate's CPU offload: every weight waits on `meta` and a hook computes on the CPU,
  as with a `device_map` that offloads. Code that sends ids to "the embedding weight's
  device" sends them to `meta` and fails; code that asks the hook computes the same
  numbers as the plain model.
- `meta` itself: a `Linear` whose weight is on `meta` raises on a CPU input, and an
  embedding made as strict as a CUDA one does too, so a missing move shows up as an error
  while the right moves run through to meta results.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from accelerate import cpu_offload
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleb.baselines import block_influence, oneshot_ppl
from sleb.devices import head_device, input_device, module_device
from sleb.evaluation.perplexity import perplexity
from sleb.nll import check_head, chunked_nll, final_hidden, full_nll
from sleb.removal import remove_blocks
from sleb.search import fast_search
from sleb.speed import measure_speed

from .conftest import DATA_DIR, check_speed_figures, tiny_llama


def offloaded(model):
    """The model with its weights on `meta` and accelerate hooks that compute on the CPU."""
    cpu_offload(model, execution_device="cpu")
    assert model.get_input_embeddings().weight.device.type == "meta"
    return model


def strict_embedding(model):
    """Make the input embedding refuse ids on another device, as a CUDA embedding does."""
    def check(module, args):
        if args[0].device != module.weight.device:
            raise RuntimeError(f"ids on {args[0].device}, embedding on {module.weight.device}")

    model.get_input_embeddings().register_forward_pre_hook(check)
    return model


def test_devices_come_from_accelerate_hooks_before_weights():
    plain, hooked = tiny_llama(num_layers=2), offloaded(tiny_llama(num_layers=2))
    assert input_device(plain) == head_device(plain) == torch.device("cpu")
    assert input_device(hooked) == head_device(hooked) == torch.device("cpu")
    assert module_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_offloaded_model_gives_the_plain_models_perplexity(windows):
    plain = tiny_llama()
    with torch.no_grad():
        logits = plain(windows).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="sum")
    got = perplexity(offloaded(tiny_llama()), windows, batch_size=4)
    assert math.isclose(got["nll"], float(nll), rel_tol=1e-5)


def test_offloaded_search_scores_equal_the_physically_pruned_models_nll(windows):
    windows = windows[:3, :16]
    model = offloaded(tiny_llama(num_layers=4))
    check_head(model, windows)
    result = fast_search(model, windows, 2, batch_size=2, progress=False)
    plain = tiny_llama(num_layers=4)
    for k, round_ in enumerate(result.rounds):
        for cand, score in round_["scores"].items():
            pruned = copy.deepcopy(plain)
            remove_blocks(pruned, result.order[:k] + [int(cand)])  # original indices of the dense copy
            assert math.isclose(score, float(full_nll(pruned, windows).sum()), rel_tol=1e-4), (k, cand)


def test_offloaded_baselines_equal_the_plain_models(windows):
    windows = windows[:3, :16]
    for method in (block_influence, oneshot_ppl):
        want = method(tiny_llama(num_layers=4), windows, 2, batch_size=2, progress=False)
        got = method(offloaded(tiny_llama(num_layers=4)), windows, 2, batch_size=2, progress=False)
        assert got.order == want.order
        for b, score in want.rounds[0]["scores"].items():
            assert math.isclose(got.rounds[0]["scores"][b], score, rel_tol=1e-4, abs_tol=1e-7)


def test_head_on_another_device_receives_the_hidden_states_and_targets(windows):
    model = tiny_llama()
    hidden = final_hidden(model, windows[:2])
    model.lm_head.to("meta")  # a Linear on meta raises on a CPU input
    nll = chunked_nll(model, hidden, windows[:2])
    assert nll.device.type == "meta" and nll.shape == (2,)


def test_ids_go_to_the_input_embeddings_device(windows):
    model = strict_embedding(tiny_llama().to("meta"))
    # The ids reach the embedding; the forward then fails only where it reads a (meta) value back.
    for call in (final_hidden, full_nll, check_head):
        with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):
            call(model, windows[:2])


def test_offloaded_speed_benchmark_runs():
    dense = offloaded(tiny_llama(num_layers=4))
    pruned = tiny_llama(num_layers=4)
    remove_blocks(pruned, [1])
    result = measure_speed(dense, offloaded(pruned), prompt_len=8, decode_batch=2, new_tokens=3, repeats=1,
                           warmup=0, threads=1, prefill_samples=1)
    assert result["device"] == "cpu"
    check_speed_figures(result, tiny_llama(num_layers=4), removed=1, repeats=1, prefill_samples=1, new_tokens=3)


@pytest.mark.skipif(not (DATA_DIR / "zeroshot").is_dir(), reason="local zero-shot data not found")
def test_offloaded_zeroshot_equals_the_plain_model(tiny_model_dir):
    from sleb.evaluation.zeroshot import evaluate_zeroshot

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    want = evaluate_zeroshot(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, ["piqa"], limit=2)
    model = offloaded(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    got = evaluate_zeroshot(model, tokenizer, ["piqa"], limit=2)
    assert got["piqa"]["acc"] == want["piqa"]["acc"] and got["piqa"]["samples"] == 2
