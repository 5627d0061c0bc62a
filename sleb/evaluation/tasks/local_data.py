"""The local copies of the five zero-shot sets, in the field names of lm-eval's stock tasks.

This is the one place where the local formats (see `../shared/data/README.md`) are converted.
Each `load_*` function is an lm-eval `custom_dataset`: it returns a `datasets.DatasetDict`
holding the split the stock task evaluates on, with the columns the stock task's prompt
functions read, so `sleb_<task>.yaml` can reuse the stock `doc_to_text` / `doc_to_choice` /
`doc_to_target` / `process_docs` unchanged. lm-eval calls them with the task's metadata as
keyword arguments; `sleb_data_dir` (set by `sleb.evaluation.zeroshot`) names the data folder, else
`sleb.data.data_dir()` decides (`SLEB_DATA_DIR`, else `../shared/data` beside the project).

Reconstructions that the local formats force (none changes what the model is scored on):

- ARC: `question` is the local `query` without its `"Question: "` prefix; the choice labels
  are `A, B, C, ...` (the Hub mixes letters and digits; only the gold *index* is used).
- WinoGrande: the local rows are already split at the blank. The longest common prefix of
  the two contexts, cut back to a word boundary, is the text before `_`; the rest of each
  context is `option1`/`option2`; `sentence = prefix + "_ " + continuation`. The stock
  functions then give back exactly the local contexts and continuation. Only `sentence`
  itself (used for decontamination, not scoring) may differ from the Hub's by a space
  after `_` or by where the options' shared leading characters are placed.
- HellaSwag: the local line is `activity_label: ctx`, with `ctx = ctx_a + " " + ctx_b`
  (`ctx_b` still lower-case, as on the Hub) and WikiHow step markers already cleaned.
  `ctx_b` is the text after the last sentence end (`. ! ?` and a space); a context that
  itself ends a sentence has `ctx_b = ""` (WikiHow rows). The stock `process_docs` then
  capitalises `ctx_b` and applies its `preprocess` again, which is a no-op except on the
  few rows whose local text kept brackets or a double space (3 of 10,042 rows).
"""

from __future__ import annotations

import bz2
import json
import os
import re
from pathlib import Path
from typing import Any

from sleb.errors import SlebError

SUBDIR = "zeroshot"
# task -> (local files, the split the stock lm-eval task evaluates on, expected rows)
FILES: dict[str, tuple[tuple[str, ...], str, int]] = {
    "piqa": (("piqa_valid.jsonl", "piqa_valid-labels.lst"), "validation", 1838),
    "winogrande": (("winogrande_dev.jsonl",), "validation", 1267),
    "hellaswag": (("hellaswag_val.txt.bz2",), "validation", 10042),
    "arc_easy": (("arc_easy_test.jsonl",), "test", 2376),
    "arc_challenge": (("arc_challenge_test.jsonl",), "test", 1172),
}
_SENTENCE_END = re.compile(r"[.!?]\s")


def zeroshot_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the local zero-shot files (`<data dir>/zeroshot`)."""
    from sleb.data import data_dir as _data_dir

    return _data_dir(data_dir) / SUBDIR


def task_files(task: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The local files of one task, whether or not they exist."""
    return [zeroshot_dir(data_dir) / name for name in FILES[task][0]]


def missing_files(tasks, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The local files of `tasks` that are not there."""
    return [path for task in tasks for path in task_files(task, data_dir) if not path.is_file()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def piqa_docs(data_dir=None) -> list[dict[str, Any]]:
    """PIQA validation as `{goal, sol1, sol2, label}` (the stock `piqa` fields)."""
    questions, labels_file = task_files("piqa", data_dir)
    rows = _jsonl(questions)
    labels = [int(x) for x in labels_file.read_text(encoding="utf-8").split()]
    if len(labels) != len(rows):
        raise SlebError(f"{labels_file} has {len(labels)} labels for {len(rows)} rows of {questions}.")
    return [
        {"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y} for r, y in zip(rows, labels, strict=True)
    ]


def arc_docs(task: str, data_dir=None) -> list[dict[str, Any]]:
    """ARC test as `{id, question, choices: {text, label}, answerKey}` (the stock `arc_*` fields)."""
    (path,) = task_files(task, data_dir)
    docs = []
    for i, row in enumerate(_jsonl(path)):
        query = row["query"]
        question = query[len("Question: "):] if query.startswith("Question: ") else query
        labels = [chr(ord("A") + k) for k in range(len(row["choices"]))]
        docs.append({
            "id": f"{task}-{i}", "question": question,
            "choices": {"text": list(row["choices"]), "label": labels}, "answerKey": labels[int(row["gold"])],
        })
    return docs


def split_winogrande(context_options: list[str]) -> tuple[str, str, str]:
    """`(text before the blank, option1, option2)` from the two contexts split at the blank."""
    first, second = context_options
    common = os.path.commonprefix([first, second])
    cut = max(common.rfind(" "), common.rfind("\t")) + 1  # back to a word boundary (0 if none)
    return first[:cut], first[cut:], second[cut:]


def winogrande_docs(data_dir=None) -> list[dict[str, Any]]:
    """WinoGrande (xl) dev as `{sentence, option1, option2, answer}` (the stock `winogrande` fields)."""
    (path,) = task_files("winogrande", data_dir)
    docs = []
    for row in _jsonl(path):
        prefix, option1, option2 = split_winogrande(row["context_options"])
        sentence = f"{prefix}_ {row['continuation'].strip()}"
        docs.append({"sentence": sentence, "option1": option1, "option2": option2, "answer": str(int(row["gold"]) + 1)})
    return docs


def split_hellaswag(context: str) -> tuple[str, str]:
    """`(ctx_a, ctx_b)` from `ctx_a + " " + ctx_b`: `ctx_b` is the unfinished last sentence, if any."""
    if context.rstrip().endswith((".", "!", "?")):
        return context, ""
    ends = list(_SENTENCE_END.finditer(context))
    if not ends:
        return "", context
    cut = ends[-1].end()
    return context[:cut].rstrip(), context[cut:]


def hellaswag_docs(data_dir=None) -> list[dict[str, Any]]:
    """HellaSwag validation as `{activity_label, ctx_a, ctx_b, ctx, endings, label}` (the Hub fields)."""
    (path,) = task_files("hellaswag", data_dir)
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) % 6:
        raise SlebError(f"{path} must hold 6 lines per item; it has {len(lines)} lines.")
    docs = []
    for i in range(0, len(lines), 6):
        head, gold, *endings = lines[i:i + 6]
        activity_label, sep, context = head.partition(": ")
        if not sep:
            raise SlebError(f"{path} line {i + 1} is not 'activity_label: context': {head[:80]!r}")
        ctx_a, ctx_b = split_hellaswag(context)
        docs.append({
            "activity_label": activity_label, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": context,
            "endings": endings, "label": str(int(gold)),
        })
    return docs


def local_docs(task: str, data_dir=None) -> list[dict[str, Any]]:
    """The raw (unprocessed) documents of one task, in the stock task's field names."""
    if task not in FILES:
        raise SlebError(f"No local copy of {task!r}; local tasks: {', '.join(FILES)}.")
    missing = missing_files([task], data_dir)
    if missing:
        raise SlebError(
            f"Local zero-shot data for {task} is missing: {', '.join(map(str, missing))}. Set the data folder "
            f"with --data-dir or SLEB_DATA_DIR (expected {zeroshot_dir(data_dir)})."
        )
    if task == "piqa":
        return piqa_docs(data_dir)
    if task == "winogrande":
        return winogrande_docs(data_dir)
    if task == "hellaswag":
        return hellaswag_docs(data_dir)
    return arc_docs(task, data_dir)


def _dataset(task: str, sleb_data_dir=None, **_metadata):
    import datasets

    split = FILES[task][1]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(local_docs(task, sleb_data_dir))})


# lm-eval `custom_dataset` entry points (called with the task metadata as keyword arguments).
def load_piqa(**metadata):
    return _dataset("piqa", **metadata)


def load_winogrande(**metadata):
    return _dataset("winogrande", **metadata)


def load_hellaswag(**metadata):
    return _dataset("hellaswag", **metadata)


def load_arc_easy(**metadata):
    return _dataset("arc_easy", **metadata)


def load_arc_challenge(**metadata):
    return _dataset("arc_challenge", **metadata)
