"""The zoo's default method, sleb+refine, on a tiny model: names, records, checkpoints, card, order file, reproduce.

One dry run (`python zoo/publish.py --dry-run` through `publish.main`) with the default settings and no
evaluation builds three ratios of the tiny Llama. Each checkpoint is checked against the dense model
physically cut by hand; the card's `python -m sleb prune` command is run through `sleb.cli.main` with an
empty sleb cache and must remove the same blocks. `method: sleb` (tests/test_zoo.py) stays the paper's
greedy, one nested order.
"""

import copy
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

from sleb.criteria import get_criterion, method_label
from sleb.orders import find_order, shipped_orders
from zoo import publish
from zoo.build import prune_command
from zoo.manifest import load_manifest

from .conftest import zoo_dry_run

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["tiny-llama-sleb-refine-20", "tiny-llama-sleb-refine-40", "tiny-llama-sleb-refine-60"]
MANIFEST = """\
org: sleb-test
defaults:
  calibration: {{nsamples: 4, seqlen: 32}}
  eval: {{ppl: [], zeroshot: []}}
  speed: {{enabled: false}}
bases:
  - name: tiny-llama
    model: {model}
    base_model: sleb-test/tiny-random-llama
    license: mit
    ratios: [0.2, 0.4, 0.6]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """One dry run of a manifest that leaves the method to the zoo's default."""
    root = tmp_path_factory.mktemp("zoo-refine")
    manifest, out, _, rc = zoo_dry_run(root, MANIFEST.format(model=tiny_model_dir))
    records = {name: json.loads((out / name / "sleb.json").read_text()) for name in NAMES}
    return SimpleNamespace(root=root, manifest=manifest, out=out, rc=rc, records=records)


def _cut_by_hand(dense, removed: list[int]):
    """The dense model with `removed` blocks deleted from its layer list: an independent physical cut."""
    model = copy.deepcopy(dense)
    model.model.layers = torch.nn.ModuleList(b for i, b in enumerate(model.model.layers) if i not in removed)
    model.config.num_hidden_layers = len(model.model.layers)
    return model


def test_default_names_records_and_each_checkpoint_equal_the_dense_model_cut_by_hand(run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    assert run.rc == 0
    assert [v.name for v in load_manifest(run.manifest).variants] == NAMES
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    for name, k in zip(NAMES, (1, 2, 4), strict=True):
        record = run.records[name]
        assert record["method"] == "sleb+refine" and record["nested"] is False
        assert record["search"]["method"] == "sleb+refine"
        assert len(record["removed"]) == k and record["search"]["by_count"][str(k)] == record["removed"]
        step = record["search"]["settings"]["refine"][str(k)]
        greedy = record["search"]["settings"]["seed_order"]
        assert step["seed_sets"]["sleb"] == sorted(greedy[:k])  # the greedy's set was one of the seeds
        assert set(step["seed_sets"]) > {"sleb", "angular", "block-influence"}  # --refine all
        assert step["score"] <= step["seed_score"] <= min(step["seed_scores"].values() or [step["seed_score"]])
        model = AutoModelForCausalLM.from_pretrained(run.out / name).eval()
        assert model.config.num_hidden_layers == 6 - k
        with torch.no_grad():
            expected = _cut_by_hand(dense, record["removed"])(ids, use_cache=False).logits
            assert torch.allclose(model(ids).logits, expected, atol=1e-5)


def test_card_says_the_method_where_the_set_came_from_and_that_sets_are_not_nested(run):
    for name in NAMES:
        record = run.records[name]
        step = record["search"]["settings"]["refine"][str(len(record["removed"]))]
        text = ModelCard.load(run.out / name / "README.md").text
        assert f"removed by {method_label('sleb+refine')}**" in text
        assert "**not nested**" in text and "The paper's exact greedy, one nested order, is `--method sleb`." in text
        assert "### Where this set came from" in text
        best = next(line for line in text.splitlines() if "(best: refined)" in line)
        assert best.startswith(f"| {get_criterion(step['seed_method']).label} ")
        assert ", ".join(map(str, step["seed"])) in best
        assert f"{step['seed_score']:,.2f} -> {step['score']:,.2f}" in text
        swaps = "; ".join(f"block {s['in']} back in, block {s['out']} out" for s in step["swaps"])
        assert (f"Swaps taken: {swaps}" if swaps else "Swaps taken: none.") in text
        assert "\n".join(["block     0   1   2   3   4   5", "cut    " + "".join(
            f"{'x' if b in record['removed'] else '.':>4}" for b in range(6))]) in text


def test_card_reproduce_command_gives_the_same_blocks(run, tmp_path, monkeypatch):
    from sleb.cli import main

    text = (run.out / NAMES[1] / "README.md").read_text()
    command = re.search(r"without the evaluation:\n\n```bash\n(.*?)\n```", text, re.S).group(1)
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "sleb", "prune"]
    assert argv[argv.index("--method") + 1] == "sleb+refine" and "--refine" not in argv
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    monkeypatch.setenv("SLEB_STATE_DIR", str(tmp_path / "state"))  # an empty cache: the search runs again
    assert main(argv[3:]) == 0
    again = json.loads((tmp_path / "again" / "sleb.json").read_text())
    assert again["method"] == "sleb+refine" and again["removed"] == run.records[NAMES[1]]["removed"]


def test_order_file_holds_one_set_per_ratio_and_the_index_the_label(run):
    folder = run.out / "_orders"
    (order,) = shipped_orders(folder)
    assert order.path == folder / "tiny-llama-sleb+refine.json" and order.method == "sleb+refine"
    found = find_order("sleb-test/tiny-random-llama", "sleb+refine", 6, folder)
    assert sorted(found.by_count) == [1, 2, 4]
    for name in NAMES:
        record = run.records[name]
        assert found.removed(len(record["removed"])) == record["removed"]
    index = json.loads((run.out / "_index" / "zoo.json").read_text())
    assert [(v["method"], v["nested"]) for v in index["variants"]] == [("sleb+refine", False)] * 3
    readme = (run.out / "_index" / "README.md").read_text()
    assert sum(f"| {method_label('sleb+refine')} |" in line for line in readme.splitlines()) == 3


def test_order_file_is_rewritten_when_a_build_holds_counts_it_lacks_and_kept_when_it_holds_them(run, tmp_path):
    ship, cache = tmp_path / "ship", tmp_path / "cache"  # a fresh cache: records made again, searches resumed
    argv = ["--manifest", str(run.manifest), "--dry-run", "--out", str(tmp_path / "out"), "--cache", str(cache),
            "--orders-dir", str(ship), "--no-index"]
    path = ship / "tiny-llama-sleb+refine.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEB_STATE_DIR", str(run.root / "state"))
        assert publish.main([*argv, "--only", NAMES[2]]) == 0
        assert sorted(find_order("sleb-test/tiny-random-llama", "sleb+refine", 6, ship).by_count) == [4]
        assert publish.main(argv) == 0  # the same largest count, but counts the file lacks: rewritten
        assert sorted(find_order("sleb-test/tiny-random-llama", "sleb+refine", 6, ship).by_count) == [1, 2, 4]
        written = path.read_bytes()
        assert publish.main([*argv, "--only", NAMES[0]]) == 0
    assert path.read_bytes() == written


def test_the_demo_lists_the_same_names_and_method(run):
    from sleb.demo.zoo_listing import load_zoo

    assert [(v.name, v.method) for v in load_zoo(run.manifest)] == [(n, "sleb+refine") for n in NAMES]


@pytest.mark.parametrize("overrides, name, flags", [
    ([], "tiny-llama-sleb-refine-20", ["--method", "sleb+refine"]),
    (["refine=all"], "tiny-llama-sleb-refine-20", ["--method", "sleb+refine"]),
    (["refine=seed"], "tiny-llama-sleb-refine-20", ["--method", "sleb+refine", "--refine", "seed"]),
    (["method=sleb"], "tiny-llama-sleb-20", ["--method", "sleb"]),
    (["method=sleb", "refine=all"], "tiny-llama-sleb-refine-20", ["--method", "sleb", "--refine", "all"]),
])
def test_method_and_refine_settings_give_the_name_and_the_exact_prune_flags(run, overrides, name, flags):
    manifest = load_manifest(run.manifest, overrides=overrides)
    variant = manifest.variants[0]
    assert variant.name == name
    argv = shlex.split(prune_command("model", variant, variant.base.settings, "float32", "cpu"))
    method_flags = argv[argv.index("--method"): argv.index("--method") + 2]
    if "--refine" in argv:
        method_flags += argv[argv.index("--refine"): argv.index("--refine") + 2]
    assert method_flags == flags


def test_an_unknown_method_is_rejected_with_the_choices(run):
    from zoo.manifest import ManifestError

    with pytest.raises(ManifestError, match="sleb\\+refine, sleb"):
        load_manifest(run.manifest, overrides=["method=sleb+refines"])


def test_path_of_the_order_file_keeps_the_plus(run):
    assert Path(run.out / "_orders" / "tiny-llama-sleb+refine.json").is_file()
