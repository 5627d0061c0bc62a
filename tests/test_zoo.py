"""The model zoo: manifest checks with lines, a dry run on a tiny model, its card, the push plan, the Hub protocol.

One dry run (`python zoo/publish.py --dry-run` through `publish.main`) builds two variants of the
tiny Llama with a tiny budget; the tests check what it wrote. Loading by repository id goes over
the Hub's own download protocol, served on loopback by olah from a local git repository.
"""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard

from sleb.blocks import BlockSwitch, find_blocks
from sleb.gguf.verify import llamacpp_available
from zoo import publish
from zoo.hub import Publisher
from zoo.manifest import ManifestError, load_manifest

from .conftest import zoo_dry_run

ROOT = Path(__file__).resolve().parents[1]
ORG = "sleb-test"
NAMES = ["tiny-llama-sleb-20", "tiny-llama-sleb-40"]
MANIFEST = """\
org: sleb-test
defaults:
  method: sleb  # the paper's greedy: one nested order (tests/test_zoo_refine.py builds the default, sleb+refine)
  calibration: {{nsamples: 4, seqlen: 32}}
  eval: {{ppl: [wikitext2], seqlen: 64, max_windows: 2, zeroshot: [piqa], zeroshot_limit: 3}}
  speed: {{prompt_len: 16, decode_batch: 2, new_tokens: 4, repeats: 1, warmup: 0}}
bases:
  - name: tiny-llama
    model: {model}
    base_model: sleb-test/tiny-random-llama
    license: mit
    ratios: [0.2, 0.4]
  - name: not-here
    model: sleb-test/no-such-model-offline
    license: apache-2.0
    ratios: [0.1]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """One dry run of the test manifest; the second base cannot be loaded offline and is skipped."""
    root = tmp_path_factory.mktemp("zoo")
    manifest, out, argv, rc = zoo_dry_run(root, MANIFEST.format(model=tiny_model_dir))
    return SimpleNamespace(root=root, manifest=manifest, out=out, cache=root / "cache", argv=argv, rc=rc,
                           model=tiny_model_dir)


def _json(path):
    return json.loads(Path(path).read_text())


def _snippet(card_text: str) -> str:
    return re.search(r"## How to use it\n\n```python\n(.*?)\n```", card_text, re.S).group(1)


def test_dry_run_writes_each_repository_folder_and_skips_what_cannot_load(run):
    assert run.rc == 3  # done, but one base was skipped
    for name in NAMES:
        files = {p.name for p in (run.out / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "sleb.json", "results.json", "README.md",
                "removal.png"} <= files
    assert not (run.out / "not-here-sleb-10").exists()
    index = _json(run.out / "_index" / "zoo.json")
    assert [v["repo"] for v in index["variants"]] == [f"{ORG}/{n}" for n in NAMES]
    assert "tiny-llama-sleb-20" in (run.out / "_index" / "README.md").read_text()


def test_the_demo_reads_the_same_manifest_and_the_staged_records(run, monkeypatch):
    from sleb.demo.zoo_listing import ZooOrders, load_zoo

    ours = load_manifest(run.manifest).variants
    theirs = load_zoo(run.manifest)
    assert [(v.name, v.repo) for v in theirs] == [(v.name, v.repo_id) for v in ours]
    monkeypatch.setenv("SLEB_ZOO_DIR", str(run.out))
    orders = ZooOrders()
    for variant in theirs[: len(NAMES)]:
        record = _json(run.out / variant.name / "sleb.json")
        assert orders.result(variant).order[: len(record["removal_order"])] == record["removal_order"]


def test_folder_loads_generates_and_equals_the_dense_model_with_those_blocks_bypassed(run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    for name in NAMES:
        folder = run.out / name
        record = _json(folder / "sleb.json")
        assert record["verification"]["reload"] == "passed" and record["verification"]["config_check"] == "passed"
        assert record["method"] == "sleb" and record["nested"] is True  # method: sleb, the paper's greedy
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert model.config.num_hidden_layers == 6 - len(record["removal_order"]) == record["num_blocks"]
        with torch.no_grad(), BlockSwitch(find_blocks(dense).blocks) as switch, \
                switch.state(skip=record["removal_order"]):
            expected = dense(ids).logits
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, expected, atol=1e-5)
        out = model.generate(**tokenizer("The capital of", return_tensors="pt"), max_new_tokens=5, do_sample=False)
        assert out.shape[1] > 3


def test_perplexity_recomputed_from_each_saved_folder_equals_its_results(run):
    """An independent hand computation from the folder's own logits, on the text and windows the results name."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sleb.evaluation.heldout import ppl_text

    text, source = ppl_text("wikitext2")
    for name in NAMES:
        folder = run.out / name
        results = _json(folder / "results.json")
        stated = results["pruned"]["ppl"]["wikitext2"]
        assert stated["data"] == source
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        ids = AutoTokenizer.from_pretrained(folder)(text[:200_000], add_special_tokens=False,
                                                    return_tensors="pt").input_ids[0]
        windows = ids[: stated["windows"] * stated["seqlen"]].view(stated["windows"], stated["seqlen"])
        with torch.no_grad():
            logits = model(windows).logits
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1),
                              reduction="sum")
        assert math.isclose(math.exp(float(nll) / windows[:, 1:].numel()), stated["perplexity"], rel_tol=1e-5)
        assert results["dense"]["ppl"]["wikitext2"]["perplexity"] != stated["perplexity"]


def test_card_parses_and_its_model_index_holds_the_numbers_of_the_result_files(run):
    ppl_files = [_json(p) for p in (run.cache / "ppl").glob("*.json")]
    zs_files = [_json(p) for p in (run.cache / "zeroshot").glob("*.json")]
    for name in NAMES:
        folder = run.out / name
        results = _json(folder / "results.json")
        assert results["pruned"]["ppl"] in ppl_files and results["dense"]["ppl"] in ppl_files
        assert results["pruned"]["zeroshot"] in zs_files
        card = ModelCard.load(folder / "README.md")
        data = card.data
        assert data.base_model == "sleb-test/tiny-random-llama" and data.license == "mit"
        assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
        assert {"sleb", "pruned", "block-pruning"} <= set(data.tags)
        assert {"Salesforce/wikitext", "allenai/c4", "baber/piqa"} <= set(data.datasets)  # C4: calibration
        index = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
        pruned = results["pruned"]
        assert index[("Salesforce/wikitext", "perplexity")] == pytest.approx(pruned["ppl"]["wikitext2"]["perplexity"],
                                                                              abs=1e-4)
        assert index[("baber/piqa", "acc")] == pytest.approx(pruned["zeroshot"]["piqa"]["acc"], abs=1e-4)
        assert len(index) == 3  # perplexity, acc and acc_norm: C4 was not measured, so the card claims nothing
        assert "| C4 (en) perplexity ↓ | not measured | not measured |" in card.text
        text = card.text
        dense = results["dense"]
        row = next(line for line in text.splitlines() if line.startswith("| WikiText-2"))
        assert f"{dense['ppl']['wikitext2']['perplexity']:.2f}" in row
        assert f"{pruned['ppl']['wikitext2']['perplexity']:.2f}" in row
        assert f"| blocks | 6 | {results['num_blocks']} |" in text
        assert "Evaluation budget of this card" in text and "capped at 2" in text and "first 3" in text
        assert results["hardware"]["name"] in text
        assert f"--manifest {run.manifest} --only {name}" in text
        assert "song2024sleb" in text and "removal.png" in text


def test_card_snippet_runs_as_written_against_the_folder(run, tmp_path, monkeypatch, capsys):
    """The snippet loads `sleb-test/<name>`; a folder of that relative path is what from_pretrained reads."""
    name = NAMES[0]
    (tmp_path / ORG).mkdir()
    shutil.copytree(run.out / name, tmp_path / ORG / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippet((run.out / name / "README.md").read_text()), "card-snippet", "exec"), {})
    assert capsys.readouterr().out.startswith("The capital of France is")


def test_the_base_order_is_written_as_an_order_file_the_app_reads(run, tmp_path):
    from sleb.orders import find_order, shipped_orders

    folder = run.out / "_orders"
    (order,) = shipped_orders(folder)
    assert order.path == folder / "tiny-llama-sleb.json" and order.name == "tiny-llama"
    assert order.base_model == "sleb-test/tiny-random-llama" and order.command.startswith("python zoo/publish.py")
    found = find_order("sleb-test/tiny-random-llama", "sleb", 6, folder)
    assert found is not None and found.max_remove == 2
    for name in NAMES:
        record = _json(run.out / name / "sleb.json")
        assert found.removed(len(record["removal_order"])) == record["removal_order"]
        assert found.rounds == record["search"]["rounds"]
    with pytest.MonkeyPatch.context() as mp:  # --orders-dir: where a maintainer ships it (sleb/orders)
        mp.setenv("SLEB_STATE_DIR", str(run.root / "state"))
        assert publish.main([*run.argv, "--orders-dir", str(tmp_path / "ship")]) == 3
    assert find_order("sleb-test/tiny-random-llama", "sleb", 6, tmp_path / "ship").order == found.order


def test_rerun_costs_nothing_and_changes_nothing(run, caplog):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for n in [*NAMES, "_orders"] for p in (run.out / n).iterdir()}
    cached = sorted(p.name for p in run.cache.rglob("*.json"))
    caplog.set_level("INFO")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEB_STATE_DIR", str(run.root / "state"))
        assert publish.main(run.argv) == 3
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for n in [*NAMES, "_orders"]
            for p in (run.out / n).iterdir()} == before
    assert sorted(p.name for p in run.cache.rglob("*.json")) == cached
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.endswith("measuring")]
    assert sum("up to date" in m for m in messages) == len(NAMES)


def test_push_plan_names_the_repository_the_files_and_the_commit_message(run):
    plans = {p["repo_id"]: p for p in _json(run.out / "plan.json")["pushes"]}
    assert set(plans) == {f"{ORG}/{n}" for n in NAMES} | {f"{ORG}/README"}
    plan = plans[f"{ORG}/tiny-llama-sleb-20"]
    folder = run.out / "tiny-llama-sleb-20"
    assert plan["files"] == sorted(p.name for p in folder.iterdir())
    assert plan["repo_type"] == "model" and plan["private"] is False and plan["key_file"] == "sleb.json"
    assert plan["commit_message"] == "Publish tiny-llama-sleb-20: SLEB removes 1 of 6 blocks (17%)"
    assert "WikiText-2 ppl" in plan["commit_description"] and "--only tiny-llama-sleb-20" in plan["commit_description"]
    index = plans[f"{ORG}/README"]
    assert index["repo_type"] == "space" and index["files"] == ["README.md", "zoo.json"]
    assert [item[0] for item in index["extra"]["collection"]["items"]] == [f"{ORG}/{n}" for n in NAMES]
    again = Publisher(ORG, private=True).plan(folder, "tiny-llama-sleb-20", plan["commit_message"])
    assert again.repo_id == plan["repo_id"] and again.private and again.key_sha256 == plan["key_sha256"]


GOOD = """\
org: sleb-test
bases:
  - name: tiny
    model: {model}
    base_model: sleb-test/tiny-random-llama
    license: mit
    ratios: [0.2]
"""
BAD_MANIFESTS = {
    "unknown local model": (GOOD.replace("{model}", "./no-such-model"), 4,
                            "model: unknown model './no-such-model': no such local file or folder"),
    "unknown hub id": (GOOD.replace("{model}", "not a hub id"), 4, "model: unknown model 'not a hub id'"),
    "ratio out of range": (GOOD.replace("[0.2]", "[0.2, 1.5]"), 7, "bad ratio 1.5"),
    "ratio given twice": (GOOD.replace("[0.2]", "[0.2, 0.2]"), 7, "ratio 0.2 is listed twice"),
    "misspelt key": (GOOD.replace("ratios:", "ratio:"), 7, "unknown key 'ratio'; did you mean 'ratios'?"),
    "misspelt setting": (GOOD + "    eval: {max_windws: 2}\n", 8,
                         "eval: unknown key 'max_windws'; did you mean 'max_windows'?"),
    "unknown task": (GOOD + "    eval: {zeroshot: [piqa, mmlu]}\n", 8, "eval.zeroshot: unknown mmlu"),
    "duplicate name": (GOOD + GOOD.split("bases:\n")[1].replace("0.2", "0.1"), 8,
                       "duplicate base name 'tiny' (first at line 3)"),
    "no licence": (GOOD.replace("    license: mit\n", ""), 3, "missing license"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_bad_manifest_is_rejected_with_the_line_at_fault_before_any_work(case, tmp_path, tiny_model_dir, caplog):
    text, line, message = BAD_MANIFESTS[case]
    path = tmp_path / "manifest.yaml"
    path.write_text(text.replace("{model}", str(tiny_model_dir)))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value).startswith(f"{path}:{line}: ") and message in str(caught.value), str(caught.value)
    caplog.set_level("ERROR")
    assert publish.main(["--manifest", str(path), "--dry-run", "--out", str(tmp_path / "out"),
                         "--cache", str(tmp_path / "cache")]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert f"{path}:{line}: " in caplog.text


def test_an_unknown_variant_or_override_is_rejected_with_the_known_names(run):
    with pytest.raises(ManifestError, match="Did you mean tiny-llama-sleb-20"):
        load_manifest(run.manifest).select(["tiny-llama-sleb-2"])
    with pytest.raises(ManifestError, match="--set eval.max_windows=0: expected a whole number >= 1"):
        load_manifest(run.manifest, overrides=["eval.max_windows=0"])
    manifest = load_manifest(run.manifest, overrides=["eval.zeroshot_limit=7", "org=someone"])
    assert manifest.bases[0].settings["eval"]["zeroshot_limit"] == 7 and manifest.variants[0].repo_id.startswith(
        "someone/")


def test_default_manifest_is_valid_and_lists_smollm2_at_three_ratios():
    manifest = load_manifest(check_hub=False)
    names = [v.name for v in manifest.variants]
    assert names[:3] == [f"smollm2-135m-instruct-sleb-refine-{p}" for p in (10, 20, 30)]
    assert manifest.bases[0].settings["method"] == "sleb+refine"
    assert manifest.bases[0].base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(b.settings["requires_gpu"] for b in manifest.bases[1:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hub_env(tmp_path: Path, endpoint: str, token: str | None = None) -> dict:
    """A child environment that may use the network (loopback only here), with no saved login."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=endpoint, PYTHONPATH=str(ROOT),
               HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def test_push_says_which_is_missing_token_offline_or_network_before_sending(run, tmp_path):
    """Run in a child process: no saved login, HF_HUB_OFFLINE unset, the 'Hub' a closed loopback port."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    script = textwrap.dedent(f"""
        import json, sys
        from zoo import publish
        from zoo.hub import Publisher, PublishError
        plan = Publisher("{ORG}").plan({str(run.out / NAMES[0])!r}, "{NAMES[0]}", "message")
        out = {{}}
        for case, publisher, call in [
            ("token", Publisher("{ORG}"), "push"),
            ("offline", Publisher("{ORG}", token="hf_secret_dummy", offline=True), "push"),
            ("network", Publisher("{ORG}", token="hf_secret_dummy"), "preflight"),
        ]:
            try:
                publisher.push(plan) if call == "push" else publisher.preflight()
                out[case] = "no error"
            except PublishError as exc:
                out[case] = str(exc)
        out["main"] = publish.main(["--manifest", {str(run.manifest)!r}, "--out", {str(tmp_path / "out")!r},
                                    "--cache", {str(tmp_path / "cache")!r}, "-q"])
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_hub_env(tmp_path, endpoint), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "no Hugging Face token" in out["token"] and "HF_TOKEN" in out["token"] and "Nothing was sent" in out["token"]
    assert "HF_HUB_OFFLINE is set" in out["offline"] and "token" not in out["offline"].split(":")[1]
    assert f"cannot reach the Hub at {endpoint}" in out["network"]
    assert out["main"] == 1 and "no Hugging Face token" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # refused before any work
    assert "hf_secret_dummy" not in proc.stdout + proc.stderr


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=zoo", "-c", "user.email=zoo@localhost", *args], cwd=folder, check=True,
                   capture_output=True)


# olah 0.5.4, offline, answers 401 "Repository not found" for a file or folder that a local mirror lacks, where
# the Hub answers 404 with X-Error-Code: EntryNotFound. transformers probes optional files when it loads a
# tokenizer (tokenizer.model, added_tokens.json, additional_chat_templates/, ...) and takes a 401 as fatal. This
# middleware gives those requests the Hub's answer; every other request is olah's own.
OLAH_SHIM = '''
import os
import re
import sys

from olah import server
from starlette.responses import Response

MIRRORS = sys.argv[1]
PATH = re.compile(r"^/(?:api/)?(?:(models|datasets|spaces)/)?([^/]+)/([^/]+)/(?:resolve|tree)/")


@server.app.middleware("http")
async def entry_not_found(request, call_next):
    response = await call_next(request)
    match = PATH.match(request.url.path)
    if response.status_code == 401 and match:
        if os.path.isdir(os.path.join(MIRRORS, match.group(1) or "models", match.group(2), match.group(3))):
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound",
                                                      "X-Error-Message": "Entry not found"})
    return response


sys.argv = ["olah", *sys.argv[2:]]
server.main()
'''


@pytest.fixture
def olah_hub(run, tmp_path):
    """A Hub-protocol server on loopback (olah), serving the staged folder as a local git repository."""
    pytest.importorskip("olah", reason="olah is not installed (pip install -r requirements.txt)")
    if not shutil.which("git"):
        pytest.skip("git is needed for olah's local repositories")
    repo = tmp_path / "mirrors" / "models" / ORG / NAMES[0]
    shutil.copytree(run.out / NAMES[0], repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "staged by the zoo")
    port = _free_port()
    config = tmp_path / "olah.toml"
    config.write_text(textwrap.dedent(f"""
        [basic]
        host = "127.0.0.1"
        port = {port}
        repos-path = "{tmp_path / 'olah-repos'}"
        mirrors-path = ["{tmp_path / 'mirrors'}"]
        hf-scheme = "http"
        hf-netloc = "127.0.0.1:9"
        hf-lfs-netloc = "127.0.0.1:9"

        [accessibility]
        offline = true
    """))
    log = open(tmp_path / "olah.log", "w")
    shim = tmp_path / "olah_server.py"
    shim.write_text(OLAH_SHIM)
    server = subprocess.Popen([sys.executable, str(shim), str(tmp_path / "mirrors"), "--config", str(config),
                               "--log-path", str(tmp_path / "olah-logs")], stdout=log, stderr=subprocess.STDOUT,
                              cwd=tmp_path)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/api/models/{ORG}/{NAMES[0]}/revision/main", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("olah did not start: " + (tmp_path / "olah.log").read_text()[-2000:])
                time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_loading_by_repository_id_over_the_hub_protocol(run, olah_hub, tmp_path):
    """The card's snippet, run as written with HF_ENDPOINT at olah; then a push of the same folder is a no-op."""
    name = NAMES[0]
    snippet = _snippet((run.out / name / "README.md").read_text())
    check = textwrap.dedent(f"""
        from zoo.hub import Publisher
        publisher = Publisher("{ORG}", token="hf_dummy", endpoint="{olah_hub}")
        print("push:", publisher.push(publisher.plan({str(run.out / name)!r}, "{name}", "message")))
    """)
    work = tmp_path / "elsewhere"  # no local folder named sleb-test/... here: the files must come over HTTP
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", snippet + "\n" + check], env=_hub_env(tmp_path, olah_hub),
                          capture_output=True, text=True, timeout=180, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("The capital of France is")
    assert lines[-1] == "push: unchanged"  # the Hub copy has the same sleb.json: nothing sent
    snapshot = next((tmp_path / "hf-home" / "hub" / f"models--{ORG}--{name}" / "snapshots").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in snapshot.iterdir()}


def test_a_gguf_is_staged_beside_the_checkpoint_and_its_card_shows_how_to_run_it(run, tmp_path):
    """`stage` with the GGUF writer's hook: the file, its `sleb.json` entry, the card's llama.cpp and Ollama lines."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sleb.gguf.export import GgufExport
    from sleb.prune import gguf_extras
    from tests.gguf_files import write_tiny_gguf
    from zoo.build import stage

    built = run.out / NAMES[0]
    assert "With llama.cpp or Ollama" not in (built / "README.md").read_text()  # no GGUF base, no converter
    record = {k: v for k, v in _json(built / "sleb.json").items() if k not in ("verification", "zoo")}
    results, removed = _json(built / "results.json"), record["removal_order"]
    write_tiny_gguf(tmp_path / "base.gguf", num_blocks=6)
    export = GgufExport("base", source=tmp_path / "base.gguf", verify=False, progress=False)
    results["gguf"] = {"file": export.file_name(6 - len(removed), 6), "type": "F32",
                       "made_by": "tensors copied from the source GGUF `base.gguf`"}
    model, tokenizer = AutoModelForCausalLM.from_pretrained(built), AutoTokenizer.from_pretrained(built)
    folder = tmp_path / "staged"

    def staged() -> bool:
        return stage(folder, model, tokenizer, record, results, None, gguf_extras(export, removed, 6, None, None))

    assert staged()
    entry = _json(folder / "sleb.json")["gguf"]
    assert entry["file"] == results["gguf"]["file"] == f"base-{6 - len(removed)}of6.gguf"
    assert GGUFReader(folder / entry["file"]).fields["llama.block_count"].contents() == 6 - len(removed)
    card = (folder / "README.md").read_text()
    assert f"huggingface-cli download {results['repo_id']} {entry['file']}" in card
    assert f"llama-cli -m {entry['file']}" in card and f"ollama run hf.co/{results['repo_id']}" in card
    assert not staged()  # complete: nothing rewritten
    (folder / entry["file"]).unlink()
    assert staged() and (folder / entry["file"]).is_file()  # a missing GGUF makes the folder incomplete


@pytest.mark.skipif(not llamacpp_available(), reason="llama-cpp-python is not installed")
def test_a_gguf_variant_gets_its_llamacpp_speed_on_the_card(tmp_path):
    """The zoo times a GGUF base's variant against the base on llama.cpp, caches it, and the card quotes it."""
    import statistics

    from gguf import GGUFReader

    from sleb.engines.llamacpp import pruned_gguf
    from tests.gguf_files import write_tiny_gguf
    from zoo.build import ResultCache, llamacpp_speed
    from zoo.card import gguf_section

    write_tiny_gguf(tmp_path / "base.gguf", num_blocks=6)
    settings = {"speed": {"enabled": True, "prompt_len": 16, "new_tokens": 6, "repeats": 2, "warmup": 0}}
    cache = ResultCache(tmp_path / "cache")
    speed = llamacpp_speed(tmp_path / "base.gguf", [2, 3], settings, "k", {"device": "cpu"}, cache, "tiny")
    assert speed["dense_blocks"] == 6 and speed["pruned_blocks"] == 4 and speed["ideal_speedup_decode_b1"] > 1
    pruned = pruned_gguf(tmp_path / "base.gguf", [2, 3])
    assert speed["pruned_model"] == str(pruned) and GGUFReader(pruned).fields["llama.block_count"].contents() == 4
    runs = speed["runs"]
    for side in ("dense", "pruned"):  # every figure is the median of the raw samples
        assert speed[f"{side}_decode_b1_tok_s"] == pytest.approx(1 / statistics.median(runs[side]["decode_b1_step_s"]))
        assert len(runs[side]["prefill_s"]) == 2
    assert speed["speedup_decode_b1"] == pytest.approx(speed["pruned_decode_b1_tok_s"] / speed["dense_decode_b1_tok_s"])
    again = llamacpp_speed(tmp_path / "base.gguf", [2, 3], settings, "k", {"device": "cpu"}, cache, "tiny")
    assert again == json.loads(json.dumps(speed))  # cached: the same figures, not a new measurement

    results = {"repo_id": "org/tiny-x", "chat_template": False, "speed_llamacpp": speed,
               "gguf": {"file": "base-4of6.gguf", "type": "F32", "made_by": "tensors copied"}}
    text, _ = gguf_section(results)
    assert f"**{speed['speedup_decode_b1']:.2f}x** (ideal {speed['ideal_speedup_decode_b1']:.2f}x" in text
    assert f"{speed['pruned_decode_b1_tok_s']:.1f} tokens/s against the dense GGUF's" in text
    settings["speed"]["enabled"] = False
    assert llamacpp_speed(tmp_path / "base.gguf", [2, 3], settings, "k2", {}, cache, "tiny") is None
