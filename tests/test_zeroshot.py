"""Zero-shot evaluation with stock lm-eval on the local data: task configs, documents, a tiny model run."""

import bz2
import json
from pathlib import Path

import pytest

from sleb.errors import SlebError
from sleb.evaluation.tasks import TASK_DIR, local_data
from sleb.evaluation.zeroshot import (
    ZEROSHOT_TASKS,
    evaluate_zeroshot,
    lm_eval_name,
    load_tasks,
    resolve_tasks,
    use_online,
)

from .conftest import DATA_DIR

ZS = DATA_DIR / "zeroshot"
ROWS = {"piqa": 1838, "winogrande": 1267, "hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1172}
STOCK_YAML = {
    "piqa": "piqa/piqa.yaml", "winogrande": "winogrande/default.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
}

pytestmark = pytest.mark.skipif(not ZS.is_dir(), reason=f"local zero-shot data not found at {ZS}")


def _jsonl(name):
    return [json.loads(line) for line in (ZS / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tasks():
    return load_tasks(ZEROSHOT_TASKS)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _eval_docs(task):
    return task.test_docs() if task.has_test_docs() else task.validation_docs()


def _fn_id(value):
    return (value.__module__.rsplit(".", 1)[-1], value.__name__) if callable(value) else value


@pytest.mark.parametrize("name", ZEROSHOT_TASKS)
def test_configs_match_stock_lm_eval(name):
    """Prompt, choices, target, metrics, preprocessing and the scored split are the stock task's."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    stock = load_yaml(Path(lm_eval.__file__).parent / "tasks" / STOCK_YAML[name])
    ours = load_yaml(TASK_DIR / f"sleb_{name}.yaml")
    assert ours["task"] == f"sleb_{name}" and "dataset_path" not in ours
    for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "process_docs", "metric_list",
                "target_delimiter", "fewshot_delimiter", "num_fewshot", "should_decontaminate",
                "doc_to_decontamination_query", "filter_list", "description"):
        assert _fn_id(ours.get(key)) == _fn_id(stock.get(key)), key
    scored = [cfg.get("test_split") or cfg.get("validation_split") for cfg in (ours, stock)]
    assert scored == [local_data.FILES[name][1]] * 2


def test_documents_match_the_data_files(tasks):
    """lm-eval's documents, prompts, choices and gold answers come straight from the raw files."""
    docs = {name: _eval_docs(task) for name, task in tasks.items()}
    assert {name: len(d) for name, d in docs.items()} == ROWS

    piqa, task = docs["piqa"], tasks["piqa"]
    raw, labels = _jsonl("piqa_valid.jsonl"), (ZS / "piqa_valid-labels.lst").read_text().split()
    for i in (0, 1, 917, len(raw) - 1):
        assert task.doc_to_text(piqa[i]) == f"Question: {raw[i]['goal']}\nAnswer:"
        assert task.doc_to_choice(piqa[i]) == [raw[i]["sol1"], raw[i]["sol2"]]
        assert task.doc_to_target(piqa[i]) == int(labels[i])

    for name, file in (("arc_easy", "arc_easy_test.jsonl"), ("arc_challenge", "arc_challenge_test.jsonl")):
        raw, task = _jsonl(file), tasks[name]
        for i in (0, 5, len(raw) - 1):
            assert task.doc_to_text(docs[name][i]) == raw[i]["query"] + "\nAnswer:"
            assert task.doc_to_choice(docs[name][i]) == raw[i]["choices"]
            assert task.doc_to_target(docs[name][i]) == raw[i]["gold"]

    # WinoGrande, every row: the stock functions give back the local contexts, continuation and gold.
    raw, task = _jsonl("winogrande_dev.jsonl"), tasks["winogrande"]
    for doc, row in zip(docs["winogrande"], raw, strict=True):
        assert task.doc_to_choice(doc) == row["context_options"]
        assert task.doc_to_text(doc) == row["gold"]  # partial evaluation: the gold context's index
        assert task.doc_to_target(doc) == row["continuation"]

    lines = bz2.open(ZS / "hellaswag_val.txt.bz2", "rt", encoding="utf-8").read().split("\n")
    task, hs = tasks["hellaswag"], docs["hellaswag"]
    for i in (0, 1, 5000, len(hs) - 1):
        head, gold, *endings = lines[6 * i:6 * i + 6]
        assert task.doc_to_text(hs[i]).lower() == head.lower()  # only ctx_b's first letter is capitalised
        assert task.doc_to_choice(hs[i]) == endings
        assert task.doc_to_target(hs[i]) == int(gold)
    assert task.doc_to_text(hs[0]) == "Roof shingle removal: A man is sitting on a roof. He"  # as lm-eval on the Hub


def test_splits_of_the_local_formats():
    assert local_data.split_winogrande(["So the blanket", "So the bed"]) == ("So the ", "blanket", "bed")
    assert local_data.split_winogrande(["Maria", "Mark"]) == ("", "Maria", "Mark")
    assert local_data.split_hellaswag("A man sits. the man") == ("A man sits.", "the man")
    assert local_data.split_hellaswag("How to x. Do y.") == ("How to x. Do y.", "")


@pytest.mark.parametrize("name", ZEROSHOT_TASKS)
def test_evaluate_tiny_model(tiny, name):
    model, tokenizer = tiny
    result = evaluate_zeroshot(model, tokenizer, [name], limit=5)
    assert list(result) == [name]
    r = result[name]
    assert r["samples"] == 5
    assert 0.0 <= r["acc"] <= 1.0
    assert r["acc_stderr"] is not None and r["acc_stderr"] >= 0.0
    if name == "winogrande":
        assert r["acc_norm"] is None  # the stock task reports acc only
    else:
        assert 0.0 <= r["acc_norm"] <= 1.0
    assert r["source"].startswith("local:zeroshot/") and r["lm_eval_version"] == "0.4.13"
    assert not model.training


def test_unknown_task_lists_known_ones():
    with pytest.raises(SlebError, match="Known tasks: piqa, winogrande, hellaswag, arc_easy, arc_challenge"):
        resolve_tasks(["piqa", "boolq"])
    with pytest.raises(SlebError, match="boolq"):
        evaluate_zeroshot(None, None, ["boolq"])


def test_missing_local_data_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "zeroshot").mkdir()
    with pytest.raises(SlebError, match="--data-dir or SLEB_DATA_DIR") as err:
        evaluate_zeroshot(None, None, ["piqa"], data_dir=tmp_path)
    assert str(tmp_path / "zeroshot" / "piqa_valid.jsonl") in str(err.value)
    with pytest.raises(SlebError, match="HF_HUB_OFFLINE"):  # no local folder and no Hub
        evaluate_zeroshot(None, None, ["piqa"], data_dir=tmp_path / "absent")


def test_online_only_when_asked_or_no_local_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert use_online(["piqa"], DATA_DIR) is False
    assert use_online(["piqa"], tmp_path / "absent") is True  # no local folder, Hub allowed
    assert use_online(["piqa"], DATA_DIR, online=True) is True
    assert [lm_eval_name("piqa", online) for online in (False, True)] == ["sleb_piqa", "piqa"]
