"""GGUF in, GGUF out: tiny llama GGUF files (f32 / f16 / q8_0) written in the tests with gguf-py.

Oracles: the source file read directly by gguf's reader; a file written by the test helper with
only the kept blocks (an independent construction); transformers' own GGUF loader on the dense
file with the removed blocks bypassed.
"""

import math
import shutil

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType
from transformers import AutoModelForCausalLM

from sleb.blocks import BlockSwitch, find_blocks
from sleb.errors import SlebError
from sleb.gguf import open_gguf, write_pruned_gguf
from sleb.verify import TOLERANCE
from tests.gguf_files import write_tiny_gguf, write_tiny_openelm


def _fields(path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def _tensors(path) -> dict:
    return {t.name: (t.tensor_type, bytes(t.data.tobytes())) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0"])
def test_kept_tensors_are_the_source_bytes(tmp_path, qtype):
    dense, out = tmp_path / "dense.gguf", tmp_path / "pruned.gguf"
    write_tiny_gguf(dense, num_blocks=4, qtype=qtype)
    record = write_pruned_gguf(dense, [1], out, progress=False)
    source, pruned = _tensors(dense), _tensors(out)
    renamed = {f"blk.{new}.": f"blk.{old}." for new, old in enumerate([0, 2, 3])}
    for name, (kind, data) in pruned.items():
        original = next((name.replace(n, o, 1) for n, o in renamed.items() if name.startswith(n)), name)
        assert source[original] == (kind, data), name
    assert set(source) - {n for n in source if n.startswith("blk.1.")} == {
        next((n.replace(k, v, 1) for k, v in renamed.items() if n.startswith(k)), n) for n in pruned}
    removed_bytes = sum(len(d) for n, (_, d) in source.items() if n.startswith("blk.1."))
    assert record["removed_tensor_bytes"] == removed_bytes
    assert record["block_count"] == 3 and _fields(out)["llama.block_count"] == 3
    # the same file as one written with only the kept blocks: tensors and every metadata key
    expected = tmp_path / "kept.gguf"
    write_tiny_gguf(expected, num_blocks=4, qtype=qtype, blocks=[0, 2, 3])
    assert _tensors(expected) == pruned
    assert _fields(expected) == _fields(out)


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0"])
def test_transformers_logits_equal_the_dense_file_with_blocks_bypassed(tmp_path, qtype):
    write_tiny_gguf(tmp_path / "dense.gguf", num_blocks=5, qtype=qtype)
    write_pruned_gguf(tmp_path / "dense.gguf", [1, 3], tmp_path / "pruned.gguf", progress=False)
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(3))
    dense = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="dense.gguf", dtype=torch.float32).eval()
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="pruned.gguf", dtype=torch.float32).eval()
    assert pruned.config.num_hidden_layers == 3
    with torch.inference_mode(), BlockSwitch(find_blocks(dense).blocks) as switch, switch.state(skip={1, 3}):
        expected = dense(ids, use_cache=False).logits
        full = pruned(ids, use_cache=False).logits
    assert torch.allclose(full, expected, atol=TOLERANCE[torch.float32] * max(1.0, float(expected.abs().max())))
    assert not torch.allclose(full, dense(ids, use_cache=False).logits, atol=1e-2)  # the blocks did matter


def test_per_layer_arrays_are_sliced(tmp_path):
    ff, kv = [64, 96, 128, 32], [2, 2, 1, 2]
    write_tiny_gguf(tmp_path / "dense.gguf", num_blocks=4, ff=ff, kv_heads=kv)
    record = write_pruned_gguf(tmp_path / "dense.gguf", [0, 2], tmp_path / "pruned.gguf", progress=False)
    fields = _fields(tmp_path / "pruned.gguf")
    assert fields["llama.feed_forward_length"] == [96, 32]
    assert fields["llama.attention.head_count_kv"] == [2, 2]
    assert set(record["metadata_changed"]) == {"llama.block_count", "llama.feed_forward_length",
                                               "llama.attention.head_count_kv"}
    write_tiny_gguf(tmp_path / "kept.gguf", num_blocks=4, ff=ff, kv_heads=kv, blocks=[1, 3])
    assert _fields(tmp_path / "kept.gguf") == fields
    assert _tensors(tmp_path / "kept.gguf") == _tensors(tmp_path / "pruned.gguf")


def test_per_layer_array_of_wrong_length_is_refused(tmp_path):
    write_tiny_gguf(tmp_path / "bad.gguf", num_blocks=4, kv_heads=[2, 2, 2])
    with pytest.raises(SlebError, match=r"llama\.attention\.head_count_kv holds 3 values but the model has 4"):
        write_pruned_gguf(tmp_path / "bad.gguf", [1], tmp_path / "out.gguf", progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.gguf"]


def test_index_derived_period_is_remapped_or_refused(tmp_path):
    period = {"llama.attention.sliding_window_pattern": (2, GGUFValueType.UINT32),
              "llama.leading_dense_block_count": (2, GGUFValueType.UINT32)}
    write_tiny_gguf(tmp_path / "swa.gguf", num_blocks=6, extra=period)
    with pytest.raises(SlebError, match=r"llama\.attention\.sliding_window_pattern = 2"):
        write_pruned_gguf(tmp_path / "swa.gguf", [1], tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()
    # removing one whole period (blocks 0-1) keeps every other block's window; two of the first blocks go
    write_pruned_gguf(tmp_path / "swa.gguf", [0, 1], tmp_path / "out.gguf", progress=False)
    fields = _fields(tmp_path / "out.gguf")
    assert fields["llama.attention.sliding_window_pattern"] == 2
    assert fields["llama.leading_dense_block_count"] == 0
    write_pruned_gguf(tmp_path / "swa.gguf", [2, 3, 4, 5], tmp_path / "short.gguf", progress=False)
    assert _fields(tmp_path / "short.gguf")["llama.leading_dense_block_count"] == 2


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file_is_refused_on_load(tmp_path, keep):
    write_tiny_gguf(tmp_path / "dense.gguf", num_blocks=3)
    data = (tmp_path / "dense.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SlebError, match="truncated"):
        open_gguf(tmp_path / "cut.gguf")
    with pytest.raises(SlebError, match="truncated"):
        write_pruned_gguf(tmp_path / "cut.gguf", [1], tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import gguf

    write_tiny_gguf(tmp_path / "dense.gguf", num_blocks=3)
    original, calls = gguf.GGUFWriter.write_tensor_data, []

    def dies_midway(self, tensor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_pruned_gguf(tmp_path / "dense.gguf", [1], tmp_path / "out.gguf", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.gguf"]


def test_existing_output_needs_overwrite(tmp_path):
    write_tiny_gguf(tmp_path / "dense.gguf", num_blocks=3)
    shutil.copy(tmp_path / "dense.gguf", tmp_path / "out.gguf")
    with pytest.raises(SlebError, match="already exists"):
        write_pruned_gguf(tmp_path / "dense.gguf", [1], tmp_path / "out.gguf", progress=False)
    write_pruned_gguf(tmp_path / "dense.gguf", [1], tmp_path / "out.gguf", overwrite=True, progress=False)
    assert GGUFReader(tmp_path / "out.gguf").fields["llama.block_count"].contents() == 2
    assert np.all([t.name.split(".")[1] in "01" for t in GGUFReader(tmp_path / "out.gguf").tensors
                   if t.name.startswith("blk.")])


def test_gguf_flag_on_a_folder_without_converter_fails_before_the_search(tmp_path, llama, caplog, monkeypatch):
    from sleb.cli import main

    monkeypatch.delenv("SLEB_LLAMA_CPP", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no converter on PATH either
    llama.save_pretrained(tmp_path / "dense")
    code = main(["prune", str(tmp_path / "dense"), "--ratio", "0.2", "--gguf", "--out", str(tmp_path / "out"),
                 "--calib", str(tmp_path / "missing.txt"), "-q"])  # a search would fail on the missing file
    assert code == 2
    assert "needs llama.cpp's convert_hf_to_gguf.py" in caplog.text and "SLEB_LLAMA_CPP is not set" in caplog.text
    assert "missing.txt" not in caplog.text
    assert not (tmp_path / "out").exists()


def test_gguf_flag_with_heal_is_refused_before_loading(tmp_path, caplog):
    from sleb.cli import main

    write_tiny_gguf(tmp_path / "tiny.gguf", num_blocks=3)
    code = main(["prune", str(tmp_path / "tiny.gguf"), "--ratio", "0.3", "--gguf", "--heal", "linear",
                 "--out", str(tmp_path / "out"), "-q"])
    assert code == 2 and "--gguf with --heal" in caplog.text


@pytest.mark.slow
def test_smollm2_gguf_at_20_percent(tmp_path):
    """The real Q4_1 file: bytes and types from the source, transformers' logits, llama.cpp's perplexity."""
    import json

    from sleb.cli import main
    from sleb.loading import default_gguf

    removed = [5, 14, 15, 16, 17, 18]  # SLEB's 20% pick on this model
    assert main(["remove", "default", "--blocks", ",".join(map(str, removed)), "--gguf", "--out",
                 str(tmp_path / "out"), "-q"]) == 0
    record = json.loads((tmp_path / "out" / "sleb.json").read_text())["gguf"]
    written = tmp_path / "out" / record["file"]
    assert record["verification"]["transformers"]["reload"] == "passed"
    assert record["verification"]["llamacpp"] in ("passed", "skipped (llama_cpp is not installed)")
    source = {t.name: t for t in GGUFReader(default_gguf()).tensors}
    keep = [i for i in range(30) if i not in removed]
    pruned = GGUFReader(written).tensors
    assert len(pruned) == len(source) - 9 * len(removed)
    for tensor in pruned:
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            parts[1] = str(keep[int(parts[1])])
        original = source[".".join(parts)]
        assert tensor.tensor_type == original.tensor_type
        assert tensor.data.tobytes() == original.data.tobytes(), tensor.name
    removed_bytes = sum(int(t.n_bytes) for n, t in source.items() if n.split(".")[0] == "blk"
                        and int(n.split(".")[1]) in removed)
    dense_size = default_gguf().stat().st_size
    assert abs(dense_size - removed_bytes - written.stat().st_size) < 64 * 1024  # metadata only


def test_a_file_failing_verification_is_deleted(tmp_path):
    from sleb.gguf.verify import verify_gguf
    from sleb.verify import Verifier

    write_tiny_gguf(tmp_path / "dense.gguf", num_blocks=4)
    write_pruned_gguf(tmp_path / "dense.gguf", [1], tmp_path / "pruned.gguf", progress=False)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="dense.gguf", dtype=torch.float32).eval()
    assert verify_gguf(tmp_path / "pruned.gguf", Verifier(dense, [1]))["transformers"]["reload"] == "passed"
    with pytest.raises(SlebError, match="does not reproduce"):
        verify_gguf(tmp_path / "pruned.gguf", Verifier(dense, [2]))  # the wrong block bypassed
    assert not (tmp_path / "pruned.gguf").exists()


@pytest.mark.slow
@pytest.mark.skipif(not __import__("sleb.gguf.convert", fromlist=["x"]).find_converter(),
                    reason="llama.cpp's convert_hf_to_gguf.py not found (set SLEB_LLAMA_CPP, see docs/gguf.md)")
def test_safetensors_checkpoint_through_llamacpp_converter(tmp_path):
    """f16 through llama.cpp's own converter: transformers' GGUF reader gives the bypassed dense model's logits."""
    import json

    from sleb.cli import main
    from sleb.loading import load_model

    _, _, source = load_model("default")  # the dequantized safetensors copy in the sleb cache
    from sleb.loading import _gguf_cache_path

    folder = _gguf_cache_path(source)
    assert main(["remove", str(folder), "--blocks", "5,14,15", "--gguf", "--gguf-type", "f16",
                 "--out", str(tmp_path / "out"), "-q"]) == 0
    record = json.loads((tmp_path / "out" / "sleb.json").read_text())["gguf"]
    assert record["gguf_type"] == "f16" and record["verification"]["transformers"]["reload"] == "passed"
    reader = GGUFReader(tmp_path / "out" / record["file"])
    assert reader.fields["llama.block_count"].contents() == 27


def test_one_part_of_a_split_gguf_is_refused(tmp_path):
    write_tiny_gguf(tmp_path / "part.gguf", num_blocks=3, extra={"split.count": (2, GGUFValueType.UINT16)})
    with pytest.raises(SlebError, match="split GGUF"):
        write_pruned_gguf(tmp_path / "part.gguf", [1], tmp_path / "out.gguf", progress=False)


LLAMA_CPP = pytest.mark.skipif(not __import__("sleb.gguf.verify", fromlist=["x"]).llamacpp_available(),
                               reason="llama_cpp is not installed")


@LLAMA_CPP
@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_llamacpp_perplexity_on_the_pruned_file_matches_transformers(tmp_path, qtype):
    from sleb.evaluation.perplexity import perplexity
    from sleb.gguf.verify import llamacpp_perplexity

    write_tiny_gguf(tmp_path / "dense.gguf", num_blocks=5, qtype=qtype)
    write_pruned_gguf(tmp_path / "dense.gguf", [1, 3], tmp_path / "pruned.gguf", progress=False)
    windows = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(5))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="pruned.gguf", dtype=torch.float32).eval()
    expected = perplexity(model, windows)["perplexity"]
    assert llamacpp_perplexity(tmp_path / "pruned.gguf", windows, threads=1) == pytest.approx(expected, rel=0.01)


@LLAMA_CPP
def test_llamacpp_runs_an_architecture_with_per_layer_arrays_after_pruning(tmp_path):
    """OpenELM: llama.cpp builds each block from its own head counts and feed-forward length."""
    from sleb.gguf.verify import llamacpp_perplexity

    heads, kv, ffs = [4, 2, 3, 4, 2], [2, 1, 1, 2, 2], [64, 96, 128, 32, 64]
    write_tiny_openelm(tmp_path / "dense.gguf", heads, kv, ffs)
    record = write_pruned_gguf(tmp_path / "dense.gguf", [1, 3], tmp_path / "pruned.gguf", progress=False)
    assert {"openelm.attention.head_count", "openelm.attention.head_count_kv",
            "openelm.feed_forward_length"} <= set(record["metadata_changed"])
    write_tiny_openelm(tmp_path / "kept.gguf", heads, kv, ffs, blocks=[0, 2, 4])
    assert _fields(tmp_path / "kept.gguf") == _fields(tmp_path / "pruned.gguf")
    assert _tensors(tmp_path / "kept.gguf") == _tensors(tmp_path / "pruned.gguf")
    windows = torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(5))
    assert math.isfinite(llamacpp_perplexity(tmp_path / "pruned.gguf", windows, threads=1))
    # what `llama-quantize --prune-layers` writes (block_count only, arrays left long) does not load
    write_tiny_openelm(tmp_path / "unsliced.gguf", heads, kv, ffs, blocks=[0, 2, 4], unsliced=True)
    with pytest.raises(ValueError, match="Failed to load"):
        llamacpp_perplexity(tmp_path / "unsliced.gguf", windows, threads=1)
