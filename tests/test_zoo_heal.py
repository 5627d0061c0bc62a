"""The zoo's healed variants: a manifest switch adds `<variant>-healed` beside each plain variant."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from zoo.manifest import ManifestError, load_manifest

from .conftest import zoo_dry_run

MANIFEST = """\
org: sleb-test
defaults:
  calibration: {{nsamples: 4, seqlen: 32}}
  eval: {{ppl: [wikitext2], seqlen: 64, max_windows: 2, zeroshot: []}}
  speed: {{enabled: false}}
  heal: {{enabled: true, method: linear, seqlen: 32, linear_tokens: 256}}
bases:
  - name: tiny-llama
    model: {model}
    base_model: sleb-test/tiny-random-llama
    license: mit
    ratios: [0.4]
"""


@pytest.fixture(scope="module")
def healed_run(tmp_path_factory, tiny_model_dir):
    manifest, out, _, rc = zoo_dry_run(tmp_path_factory.mktemp("zoo-heal"), MANIFEST.format(model=tiny_model_dir))
    return manifest, out, rc


def test_heal_switch_names_a_healed_variant_beside_each_plain_one(healed_run):
    manifest, _, _ = healed_run
    variants = load_manifest(manifest).variants
    assert [(v.name, v.healed) for v in variants] == [("tiny-llama-sleb-refine-40", False),
                                                      ("tiny-llama-sleb-refine-40-healed", True)]
    from sleb.demo.zoo_listing import load_zoo  # the demo lists the same variants, the healed one as healed

    assert [(v.name, v.repo, v.healed) for v in load_zoo(manifest)] == [(v.name, v.repo_id, v.healed)
                                                                        for v in variants]


def test_healed_variant_is_a_plain_checkpoint_with_dense_pruned_and_healed_on_its_card(healed_run):
    _, out, rc = healed_run
    assert rc == 0
    plain_dir, healed_dir = out / "tiny-llama-sleb-refine-40", out / "tiny-llama-sleb-refine-40-healed"
    plain = AutoModelForCausalLM.from_pretrained(plain_dir).eval()
    healed = AutoModelForCausalLM.from_pretrained(healed_dir).eval()
    assert type(healed) is type(plain) and set(healed.state_dict()) == set(plain.state_dict())
    ids = torch.randint(3, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(healed(ids).logits, plain(ids).logits, atol=1e-4)
    results = json.loads((healed_dir / "results.json").read_text())
    record = json.loads((healed_dir / "sleb.json").read_text())
    assert record["healing"]["methods"] == ["linear"] and results["healing"]["budget"]["linear_tokens"] == 256
    plain_results = json.loads((plain_dir / "results.json").read_text())
    assert results["healing"]["unhealed"]["ppl"] == plain_results["pruned"]["ppl"]
    card = (healed_dir / "README.md").read_text()
    assert "## Dense vs pruned vs healed" in card and "of the log-perplexity gap" in card
    assert "--heal linear" in card
    assert "Dense vs pruned vs healed" not in (plain_dir / "README.md").read_text()


def test_a_bad_heal_setting_names_its_line(tmp_path, tiny_model_dir):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST.format(model=tiny_model_dir).replace("method: linear", "method: lora"))
    with pytest.raises(ManifestError, match=r"manifest.yaml:6: heal.method: expected one of linear"):
        load_manifest(manifest, check_hub=False)
