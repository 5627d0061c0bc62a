"""Calibration protocols: the reference code's shuffled-rows protocol, and the overlap warning."""

import json
import logging

import datasets
import pytest
import torch

from sleb.calibration import CalibrationSpec, build_calibration
from sleb.errors import SlebError

from .conftest import DATA_DIR
from .test_pipeline import tokenizer  # noqa: F401  (fixture)


def test_reference_protocol_matches_datasets_shuffle_of_the_rows(tokenizer):  # noqa: F811
    rows = [json.loads(line)["text"] for line in (DATA_DIR / "c4-sample" / "c4_sample.jsonl").open()][1100:]
    shuffled = datasets.Dataset.from_dict({"text": rows}).shuffle(seed=7)
    ids = tokenizer(" ".join(shuffled[:5]["text"]), return_tensors="pt").input_ids[0]
    count = ids.numel() // 64
    expected = ids[: count * 64].view(count, 64)

    calib = build_calibration(tokenizer, CalibrationSpec(source="c4", rows=5, seqlen=64, seed=7))
    assert count > 1 and torch.equal(calib.windows, expected)
    assert calib.info["protocol"] == "reference" and calib.info["documents_used"] == 5
    other = build_calibration(tokenizer, CalibrationSpec(source="c4", rows=5, seqlen=64, seed=8))
    assert other.info["fingerprint"] != calib.info["fingerprint"]


def test_reference_protocol_refuses_a_token_budget_too(tokenizer):  # noqa: F811
    with pytest.raises(SlebError, match="not both"):
        build_calibration(tokenizer, CalibrationSpec(rows=4, tokens=256, seqlen=64))


def test_random_windows_warn_when_the_text_is_too_short_not_to_overlap(tokenizer, tmp_path, caplog):  # noqa: F811
    text = tmp_path / "small.txt"
    text.write_text("\n".join(f"Line {i} of a small calibration file about rivers and hills." for i in range(30)))
    pool = tokenizer("\n\n".join(text.read_text().splitlines()), add_special_tokens=False,
                     return_tensors="pt").input_ids.numel()
    with caplog.at_level(logging.WARNING, logger="sleb.calibration"):
        build_calibration(tokenizer, CalibrationSpec(source=str(text), nsamples=pool // 16, seqlen=32))
    assert any("overlap" in r.message and str(pool) in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sleb.calibration"):
        build_calibration(tokenizer, CalibrationSpec(source=str(text), nsamples=2, seqlen=32))
    assert not any("overlap" in r.message for r in caplog.records)


def test_same_tokens_in_other_windows_are_other_calibration_data(tokenizer, llama):  # noqa: F811
    """A search cached for 16 windows of 64 tokens is not reused for the same tokens in 4 windows of 256."""
    from sleb.baselines import oneshot_ppl
    from sleb.prune import find_removal

    short = build_calibration(tokenizer, CalibrationSpec(source="c4", tokens=1024, seqlen=64))
    long = build_calibration(tokenizer, CalibrationSpec(source="c4", tokens=1024, seqlen=256))
    assert torch.equal(short.windows.flatten(), long.windows.flatten())
    assert short.info["fingerprint"] != long.info["fingerprint"]
    short.windows, long.windows = short.windows % 128, long.windows % 128  # the tiny model's vocabulary
    first = find_removal(llama, short, 2, "oneshot-ppl", progress=False)
    second = find_removal(llama, long, 2, "oneshot-ppl", progress=False)
    direct = oneshot_ppl(llama, long.windows, 2, progress=False)
    assert second.rounds == direct.rounds and second.rounds != first.rounds
