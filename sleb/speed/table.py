"""The dense-vs-pruned speed table, and which ideal each measured figure is compared with."""

from __future__ import annotations

# figure -> (table label, the ideal it is compared with); rates are `<figure>_tok_s`, TTFT is `ttft_s`
FIGURES = {
    "prefill": ("prefill, batch 1", "prefill"),
    "ttft": ("time to first token, batch 1", "prefill"),
    "decode_b1": ("decode, batch 1 (median step)", "decode_b1"),
    "decode_b1_total": ("decode, batch 1 (round totals)", "decode_b1"),
    "decode_batch": ("decode, batch {decode_batch} (median step)", "decode_batch"),
    "decode_batch_total": ("decode, batch {decode_batch} (round totals)", "decode_batch"),
    "generate_decode_b1": ("decode via generate, batch 1", "decode_b1"),
}
IDEAL_OF = {key: ideal for key, (_, ideal) in FIGURES.items()}
# figure -> its samples; `paired_speedup_<figure>` is the median of the dense/pruned ratios of back-to-back samples
PAIRED = {"prefill": "prefill_s", "ttft": "ttft_s", "decode_b1": "decode_b1_step_s",
          "decode_batch": "decode_batch_step_s"}


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.1f} {unit}"


def format_speed(result: dict) -> str:
    """A table: dense | pruned | speedup | ideal | measured/ideal | paired speedup; then memory and settings."""
    header = f"{'':40} {'dense':>14} {'pruned':>14} {'speedup':>8} {'ideal':>7} {'meas/ideal':>10} {'paired':>7}"
    lines = [header, "-" * len(header)]
    for key, (label, ideal_key) in FIGURES.items():
        if f"speedup_{key}" not in result:
            continue
        suffix, unit = ("ttft_s", "s") if key == "ttft" else (f"{key}_tok_s", "tok/s")
        lines.append(
            f"{label.format(**result):40} {_fmt(result['dense_' + suffix], unit):>14} "
            f"{_fmt(result['pruned_' + suffix], unit):>14} {result['speedup_' + key]:>7.3f}x "
            f"{result['ideal_speedup_' + ideal_key]:>6.3f}x {result['fidelity_' + key]:>10.3f}"
            + (f" {result['paired_speedup_' + key]:>6.3f}x" if f"paired_speedup_{key}" in result else ""))
    lines += _memory_lines(result)
    lines.append(f"{'blocks / parameters':40} {result['dense_blocks']:>4} / {result['dense_params'] / 1e6:6.1f}M "
                 f"{result['pruned_blocks']:>4} / {result['pruned_params'] / 1e6:6.1f}M")
    lines.append(_settings_line(result))
    return "\n".join(lines)


def _memory_lines(result: dict) -> list[str]:
    mib = 2**20
    if "dense_file_bytes" in result:  # llama.cpp: the GGUF files
        memory = [("GGUF file", "file_bytes")]
    else:
        if "dense_peak_cuda_allocated_bytes" in result:
            memory = [("peak CUDA allocated (both models)", "peak_cuda_allocated_bytes"),
                      ("  of which this model's run", "peak_cuda_over_baseline_bytes")]
        else:
            memory = [("peak process RSS (both models)", "peak_rss_bytes"),
                      ("  over baseline (this model's run)", "peak_rss_over_baseline_bytes")]
        memory = [("model (params + buffers)", "model_bytes"), *memory,
                  ("estimate: model + its run", "peak_estimate_bytes")]
    lines = []
    for label, key in memory:
        d, p = result[f"dense_{key}"], result[f"pruned_{key}"]
        ratio = d / p if p > 0 else float("nan")
        lines.append(f"{label:40} {d / mib:>10,.1f} MiB {p / mib:>10,.1f} MiB {ratio:>7.3f}x")
    return lines


def _settings_line(result: dict) -> str:
    ideal = f"ideal = FLOP ratio incl. attention (params only: {result['ideal_speedup_params']:.3f}x)"
    if result.get("engine") == "llamacpp":
        return (f"llama.cpp (llama-cpp-python {result['llama_cpp_python_version']}), prompt {result['prompt_len']} "
                f"tokens, {result['new_tokens']} new tokens, {result['repeats']} rounds, medians; "
                f"{result['threads']} threads; {ideal}")
    return (f"prompt {result['prompt_len']} tokens" + (f" (clipped from {result['prompt_len_requested']})"
                                                       if result["prompt_clipped"] else "")
            + f", {result['new_tokens']} new tokens ({result['batch1_new_tokens']} at batch 1), "
            f"{result['repeats']} rounds ({result['prefill_samples']} prefill/TTFT samples each), medians; "
            f"{result['device']} {result['dtype']}, {result['threads']} threads; {ideal}")
