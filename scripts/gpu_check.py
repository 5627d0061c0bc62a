"""Device check, prepared for the day a GPU is lent: search, prune + verify, eval and bench on CUDA.

    python scripts/gpu_check.py                      # the default model over every visible GPU
    python scripts/gpu_check.py --model Qwen/Qwen2.5-0.5B --num-remove 4
    python scripts/gpu_check.py --device cpu --tiny  # smoke run of this script on a CPU (a tiny random Llama)

Steps, each timed, each recorded as ok / failed with its error:

1. load the model with `device_map` over the available GPUs (`--device-map auto|balanced`)
   and record where its modules sit;
2. search and prune (`sleb.prune.prune`: the SLEB search, removal, save);
3. verify: reload the saved folder the same way and compare its logits on a few windows
   with the dense model's with the removed blocks bypassed (plus whatever check the saved
   `sleb.json` records, when this version of sleb writes one);
4. eval: perplexity of dense and pruned on a few windows (WikiText-2 if the data folder is
   there, else this repository's README as text);
5. bench: `sleb.speed.measure_speed`, dense vs pruned, small settings.

The last line on stdout is one JSON object: `ok` and each step's figures. Without CUDA and
without `--device cpu` it says so in that line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sleb.blocks import BlockSwitch, find_blocks  # noqa: E402
from sleb.calibration import CalibrationSpec  # noqa: E402
from sleb.data import LOCAL_FILES, data_dir  # noqa: E402
from sleb.devices import devices_of, head_device, input_device  # noqa: E402
from sleb.evaluation.heldout import ppl_text  # noqa: E402
from sleb.evaluation.perplexity import perplexity, token_windows  # noqa: E402
from sleb.files import read_record  # noqa: E402
from sleb.loading import load_model  # noqa: E402
from sleb.prune import prune  # noqa: E402
from sleb.speed import measure_speed  # noqa: E402

log = logging.getLogger("gpu_check")


def tiny_model_folder(root: Path) -> str:
    """A tiny random Llama saved with the default model's tokenizer: real text, seconds of work."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer, _ = load_model("default", device="cpu")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    folder = root / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def repository_text() -> str:
    """This repository's README and docs pages, four times: English text when no data folder is there."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n\n".join(page.read_text(encoding="utf-8") for page in pages) * 4


def evaluation_text() -> tuple[str, str]:
    """WikiText-2 test when the data folder is there, else this repository's docs (a device check needs text)."""
    if (data_dir() / LOCAL_FILES["wikitext2-test"]).is_file():
        return ppl_text("wikitext2")
    return repository_text(), "README.md and docs/*.md x 4"


def calibration_spec(root: Path, seqlen: int) -> CalibrationSpec:
    if (data_dir() / LOCAL_FILES["c4"]).is_file():
        return CalibrationSpec(source="c4", nsamples=8, seqlen=seqlen)
    path = root / "calibration.txt"
    path.write_text(repository_text(), encoding="utf-8")
    return CalibrationSpec(source=str(path), nsamples=8, seqlen=seqlen)


def placement(model) -> dict:
    return {"devices": devices_of(model), "input": str(input_device(model)), "head": str(head_device(model)),
            "blocks": sorted({str(next(b.parameters()).device) for b in find_blocks(model).blocks})}


def step(report: dict, name: str, fn):
    """Run one step; record its figures or its error; return its value (None when it failed)."""
    start = time.perf_counter()
    try:
        value, figures = fn()
        report[name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2), **figures}
        log.info("%s: ok %s", name, figures)
        return value
    except Exception as exc:  # a device check reports every failure and carries on where it can
        report[name] = {"ok": False, "seconds": round(time.perf_counter() - start, 2),
                        "error": f"{type(exc).__name__}: {exc}"[:2000]}
        log.error("%s failed:\n%s", name, traceback.format_exc())
        return None


def logits_gap(dense, pruned, order: list[int], windows: torch.Tensor) -> float:
    """Max |logit difference| of the saved pruned model and the dense one with `order` bypassed."""
    with torch.inference_mode(), BlockSwitch(find_blocks(dense).blocks) as switch, switch.state(skip=order):
        expected = dense(input_ids=windows.to(input_device(dense))).logits.float().cpu()
    with torch.inference_mode():
        got = pruned(input_ids=windows.to(input_device(pruned))).logits.float().cpu()
    return float((got - expected).abs().max())


def run(args) -> dict:
    device = args.device
    report: dict = {"device": device, "model": "tiny random Llama" if args.tiny else args.model,
                    "torch": torch.__version__,
                    "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if device == "cuda" and report["cuda_devices"]:
        report["gpus"] = [torch.cuda.get_device_name(i) for i in range(report["cuda_devices"])]
    device_map = args.device_map if device == "cuda" else None
    work = Path(tempfile.mkdtemp(prefix="sleb-gpu-check-"))
    model_name = tiny_model_folder(work) if args.tiny else args.model

    loaded = step(report, "load", lambda: (lambda m: (m, placement(m[0])))(
        load_model(model_name, device=device, dtype=args.dtype, device_map=device_map)))
    if loaded is None:
        return report
    dense, tokenizer, _ = loaded
    out = work / "pruned"
    spec = calibration_spec(work, args.seqlen)
    folders = step(report, "search_prune", lambda: (lambda f: (f, {
        "order": read_record(f[0])["removal_order"],
        "search_s": read_record(f[0])["timings"]["search_s"]}))(
        prune(model_name, out, num_remove=[args.num_remove], calibration=spec, device=device, dtype=args.dtype,
              progress=False, state_path=work / "search-state.json")))
    if folders is None:
        return report
    record = read_record(folders[0])
    order = record["removal_order"]
    text, source = evaluation_text()
    windows = token_windows(tokenizer, text[: 200 * args.seqlen], args.seqlen, args.eval_windows)

    def verify():
        pruned, _, _ = load_model(str(folders[0]), device=device, dtype=args.dtype, device_map=device_map)
        gap = logits_gap(dense, pruned, order, windows[:2, :64])
        tol = 1e-3 if next(dense.parameters()).dtype == torch.float32 else 5e-2
        if not gap <= tol:
            raise AssertionError(f"saved model's logits differ from the bypassed dense model's by {gap} > {tol}")
        return pruned, {"max_abs_logit_gap": gap, "tolerance": tol, "record_check": record.get("verify"),
                        "pruned_placement": placement(pruned)}

    pruned = step(report, "verify", verify)
    if pruned is None:
        return report

    def evaluate():
        dense_ppl = perplexity(dense, windows)["perplexity"]
        pruned_ppl = perplexity(pruned, windows)["perplexity"]
        if not (math.isfinite(dense_ppl) and math.isfinite(pruned_ppl)) or dense_ppl == pruned_ppl:
            raise AssertionError(f"perplexities not finite or equal: {dense_ppl}, {pruned_ppl}")
        return None, {"text": source, "windows": int(windows.shape[0]), "seqlen": args.seqlen,
                      "dense_ppl": dense_ppl, "pruned_ppl": pruned_ppl}

    step(report, "eval", evaluate)
    step(report, "bench", lambda: (lambda r: (r, {k: r[k] for k in (
        "device", "dtype", "prompt_len", "decode_batch", "speedup_prefill", "speedup_decode_b1",
        "speedup_decode_batch", "ideal_speedup_decode_b1", "dense_decode_b1_tok_s", "pruned_decode_b1_tok_s")}))(
        measure_speed(dense, pruned, tokenizer, prompt_len=args.prompt_len, decode_batch=4, new_tokens=16,
                      repeats=args.repeats, warmup=1)))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="Hub id, folder, .gguf or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--device-map", default="auto", help="accelerate device_map on CUDA: auto, balanced, sequential")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of --model (smoke run)")
    p.add_argument("--num-remove", type=int, default=3)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "skipped": "no CUDA device here; run `--device cpu --tiny` for a smoke run"}))
        return 2
    report = run(args)
    steps = ("load", "search_prune", "verify", "eval", "bench")
    report["ok"] = all(report.get(s, {}).get("ok") for s in steps)
    print(json.dumps(report, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
