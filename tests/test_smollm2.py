"""The real embedded model, SmolLM2-135M-Instruct: prune with a small budget, reload, compare perplexity."""

import json
import math

import pytest
from transformers import AutoModelForCausalLM

from sleb.baselines import last_blocks
from sleb.calibration import CalibrationSpec
from sleb.evaluation.heldout import ppl_text
from sleb.evaluation.perplexity import perplexity, token_windows
from sleb.loading import load_model
from sleb.prune import prune
from sleb.removal import remove_blocks

pytestmark = pytest.mark.slow
REMOVE = 2


@pytest.fixture(scope="module")
def wikitext_windows():
    _, tokenizer, _ = load_model("default")
    text, _ = ppl_text("wikitext2")
    return token_windows(tokenizer, text, seqlen=256, max_windows=6)


def test_pruned_smollm2_loads_with_plain_transformers_and_beats_last_blocks(tmp_path, wikitext_windows):
    out = tmp_path / "smollm2-sleb"
    spec = CalibrationSpec(source="c4", nsamples=4, seqlen=64)
    prune("default", out, num_remove=[REMOVE], calibration=spec, progress=False)
    record = json.loads((out / "sleb.json").read_text())
    assert record["num_blocks_dense"] == 30 and record["num_blocks"] == 28
    assert record["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    pruned = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no sleb, no gguf, no remote code
    assert pruned.config.num_hidden_layers == 28 and "quantization_config" not in pruned.config.to_dict()
    ppl_sleb = perplexity(pruned, wikitext_windows)["perplexity"]

    dense, _, _ = load_model("default")
    baseline = last_blocks(dense, wikitext_windows, REMOVE, progress=False)
    remove_blocks(dense, baseline.removed(REMOVE))
    ppl_last = perplexity(dense, wikitext_windows)["perplexity"]
    assert math.isfinite(ppl_sleb) and ppl_sleb < ppl_last, (ppl_sleb, ppl_last)
