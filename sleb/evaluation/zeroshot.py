"""Zero-shot accuracy with stock lm-eval (the five tasks of the SLEB paper).

The in-memory model is wrapped in `lm_eval.models.huggingface.HFLM` and scored by
`lm_eval.simple_evaluate`; nothing of the harness is forked.

- **Offline** (the local data folder is there): the task configs in `sleb/tasks`
  (`sleb_piqa`, ...) are lm-eval's stock configs with only the loading replaced, reading
  `<data dir>/zeroshot` (`--data-dir`, `SLEB_DATA_DIR`, else `../shared/data`).
- **Online** (`online=True`, or the local folder is missing and `HF_HUB_OFFLINE` is not
  set): lm-eval's own task names, which download from the Hugging Face Hub.

Both report the same metrics (`acc`, and `acc_norm` where the stock task has it) on the
same splits: PIQA, WinoGrande and HellaSwag validation, ARC test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from ..errors import SlebError

log = logging.getLogger(__name__)

ZEROSHOT_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")
LOCAL_PREFIX = "sleb_"
# lm-eval messages that only restate what we chose on purpose (an in-memory model, a local loader).
_EXPECTED_WARNINGS = (
    "Custom kwargs can be passed to `--metadata`",
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)


def resolve_tasks(tasks: str | Iterable[str] | None) -> list[str]:
    """Task names as a list (a comma-separated string is accepted); unknown names raise SlebError."""
    if tasks is None:
        return list(ZEROSHOT_TASKS)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in ZEROSHOT_TASKS]
    if unknown or not names:
        raise SlebError(
            f"Unknown zero-shot task(s): {', '.join(unknown) or '(none given)'}. "
            f"Known tasks: {', '.join(ZEROSHOT_TASKS)}."
        )
    return list(dict.fromkeys(names))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def use_online(tasks: Iterable[str], data_dir: str | os.PathLike | None = None, online: bool | None = None) -> bool:
    """Whether to use lm-eval's stock (Hub) tasks; raises SlebError when the local files are needed but missing."""
    from .tasks import local_data

    if online:
        return True
    folder = local_data.zeroshot_dir(data_dir)
    if online is None and not folder.is_dir() and not _hub_offline():
        log.info("No local zero-shot data at %s; using lm-eval's tasks from the Hugging Face Hub.", folder)
        return True
    missing = local_data.missing_files(tasks, data_dir)
    if missing:
        hint = "" if folder.is_dir() else " HF_HUB_OFFLINE is set, so the Hub copies cannot be used either."
        raise SlebError(
            f"Local zero-shot data missing: {', '.join(str(p) for p in missing)}. The files are expected in "
            f"{folder} (set the data folder with --data-dir or SLEB_DATA_DIR; see ../shared/data/README.md).{hint}"
        )
    return False


def lm_eval_name(task: str, online: bool) -> str:
    """The lm-eval task name for one of ZEROSHOT_TASKS: the stock one online, `sleb_<task>` offline."""
    return task if online else LOCAL_PREFIX + task


def task_manager(data_dir: str | os.PathLike | None = None, online: bool = False):
    """An lm-eval TaskManager: the stock tasks online, only our local task folder offline."""
    from lm_eval.tasks import TaskManager

    from ..data import data_dir as _data_dir
    from .tasks import TASK_DIR

    if online:
        return TaskManager()
    return TaskManager(
        include_path=str(TASK_DIR), include_defaults=False,
        metadata={"sleb_data_dir": str(_data_dir(data_dir))},
    )


def load_tasks(tasks=None, data_dir=None, online: bool | None = None) -> dict:
    """`{task: lm-eval Task}` as the evaluation builds them (documents, prompts, choices)."""
    names = resolve_tasks(tasks)
    online = use_online(names, data_dir, online)
    with quiet_lm_eval():
        return _load(names, data_dir, online)[1]


def _load(names: list[str], data_dir, online: bool):
    """`(task manager, {task: Task})`; a Hub download that fails becomes a SlebError."""
    manager = task_manager(data_dir, online)
    try:
        loaded = manager.load([lm_eval_name(t, online) for t in names])["tasks"]
    except SlebError:
        raise
    except Exception as exc:
        if not online:
            raise
        raise SlebError(
            f"Could not load the lm-eval tasks {', '.join(names)} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). Offline, put the local data folder in place (--data-dir or "
            f"SLEB_DATA_DIR; expected {_zeroshot_dir(data_dir)})."
        ) from exc
    return manager, {t: loaded[lm_eval_name(t, online)] for t in names}


def _zeroshot_dir(data_dir) -> Path:
    from .tasks import local_data

    return local_data.zeroshot_dir(data_dir)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(text in message for text in _EXPECTED_WARNINGS)


@contextmanager
def quiet_lm_eval():
    """lm-eval logs at WARNING or above (minus the warnings about choices made on purpose); no `map` progress bars."""
    from datasets.utils import logging as ds_logging

    root = logging.getLogger("lm_eval")
    chatty = [logging.getLogger(name) for name in ("lm_eval.api.task", "lm_eval.models.huggingface")]
    level, drop = root.level, _DropExpected()
    bars = ds_logging.is_progress_bar_enabled()
    root.setLevel(max(level, logging.WARNING))
    for logger in chatty:
        logger.addFilter(drop)
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        root.setLevel(level)
        for logger in chatty:
            logger.removeFilter(drop)
        if bars:
            ds_logging.enable_progress_bar()


def _source(task: str, online: bool, data_dir) -> str:
    if online:
        return f"lm-eval:{task}"
    from ..data import data_dir as _data_dir
    from .tasks import local_data

    root = _data_dir(data_dir).resolve()
    shown = []
    for path in local_data.task_files(task, data_dir):
        try:
            shown.append(str(path.resolve().relative_to(root)))
        except ValueError:
            shown.append(str(path))
    return "local:" + "+".join(shown)


def _hflm_class():
    """lm-eval's HFLM, with its device the input embeddings' (it puts every request's ids there)."""
    from lm_eval.models.huggingface import HFLM

    from ..devices import input_device

    class SlebHFLM(HFLM):
        @property
        def device(self):
            return input_device(self.model)

    return SlebHFLM


def _metric(values: dict, name: str) -> float | None:
    value = values.get(f"{name},none")
    return None if value is None or value == "N/A" else float(value)


def evaluate_zeroshot(
    model, tokenizer, tasks=ZEROSHOT_TASKS, limit: int | float | None = None, batch_size: int | str = 1,
    data_dir: str | os.PathLike | None = None, online: bool | None = None,
) -> dict:
    """Zero-shot accuracy of an in-memory causal LM on `tasks` (names from ZEROSHOT_TASKS).

    Returns `{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "samples", "source",
    "lm_eval_version"}}`; `acc_norm` is None where the stock task does not report it
    (WinoGrande). `limit` takes the first `limit` documents of each task (a float < 1: a
    fraction), as lm-eval's `--limit` does.
    """
    import lm_eval

    names = resolve_tasks(tasks)
    online = use_online(names, data_dir, online)
    lm_names = {t: lm_eval_name(t, online) for t in names}
    where = "lm-eval's stock tasks (Hub)" if online else f"local data in {_zeroshot_dir(data_dir)}"
    log.info("Zero-shot %s on %s with lm-eval %s, limit=%s, batch size %s", ", ".join(names), where,
             lm_eval.__version__, limit, batch_size)
    was_training = model.training
    model.eval()
    try:
        with quiet_lm_eval():
            manager, loaded = _load(names, data_dir, online)
            lm = _hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = lm_eval.simple_evaluate(
                model=lm, tasks=list(loaded.values()), limit=limit, task_manager=manager, log_samples=False,
            )
    finally:
        model.train(was_training)
    results = {}
    for task, name in lm_names.items():
        values = out["results"][name]
        n = out["n-samples"][name]
        results[task] = {
            "acc": _metric(values, "acc"),
            "acc_stderr": _metric(values, "acc_stderr"),
            "acc_norm": _metric(values, "acc_norm"),
            "acc_norm_stderr": _metric(values, "acc_norm_stderr"),
            "samples": int(n["effective"]),
            "source": _source(task, online, data_dir),
            "lm_eval_version": lm_eval.__version__,
        }
        log.info("%s: acc %.4f, acc_norm %s (%d samples)", task, results[task]["acc"],
                 "n/a" if results[task]["acc_norm"] is None else f"{results[task]['acc_norm']:.4f}",
                 results[task]["samples"])
    return results
