"""Load test: N visitors ask the demo at the same moment through gradio_client.

    python scripts/load_app.py                    # starts `python app.py`, 8 clients, default settings
    python scripts/load_app.py --clients 8 --url http://127.0.0.1:7860/ --pid 1234

Without `--url` it starts `python app.py` itself (fresh, on a free port) and waits until it
serves. Every client submits the same request at once (default model, its default method
and ratio, 64 new tokens, greedy) and watches its own stream: time to the first dense text,
time to the full answer (status "Done."), and whether it was told its place in line.
Prints p50/p95 of both, errors, and the server's peak resident memory (VmHWM, from
/proc/PID/status) beside the size of the dense weights; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from gradio_client import Client

log = logging.getLogger("load_app")
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Explain in two sentences why the sky is blue."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def start_app(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log_path.open("w"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"app.py exited: {log_path.read_text()[-2000:]}")
        try:
            Client(url, verbose=False).close()
            return server, url
        except Exception:
            time.sleep(1)
    raise SystemExit("app.py did not start within 15 minutes")


def visitor(url: str, args, barrier: threading.Barrier, out: dict) -> None:
    client = Client(url, verbose=False)
    barrier.wait()
    start = time.perf_counter()
    job = client.submit(args.model, args.method, args.percent, 0, args.prompt, args.new_tokens, 0, 0,
                        api_name="/run")
    first = None
    told_place = False
    while not job.done():
        outputs = job.outputs()
        if outputs:
            told_place = told_place or any("in line" in str(o[0]) for o in outputs)
            if first is None and any(o[1] for o in outputs):
                first = time.perf_counter() - start
        time.sleep(0.05)
    try:
        final = job.result()
        out.update(ok=final[0] == "Done." and bool(final[1]) and bool(final[2]), status=final[0],
                   details=final[-1])
    except Exception as exc:  # an error shown to the visitor
        out.update(ok=False, status=f"{type(exc).__name__}: {exc}")
    outputs = job.outputs()
    told_place = told_place or any("in line" in str(o[0]) for o in outputs)
    if first is None and any(o[1] for o in outputs):
        first = time.perf_counter() - start
    out.update(first_s=first, full_s=time.perf_counter() - start, told_place=told_place)
    client.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))], 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--url", help="a running app (default: start python app.py)")
    p.add_argument("--pid", type=int, help="the running app's process id, for its peak memory")
    p.add_argument("--model", default="default")
    p.add_argument("--method", help="default: the model's default in the app (sleb/orders/models.json)")
    p.add_argument("--percent", type=float, default=10)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--log", type=Path, default=Path("/tmp/load_app-server.log"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.method:
        from sleb.demo import DemoConfig, ModelStore

        args.method = ModelStore(DemoConfig.from_env()).defaults_for(args.model)["method"]

    server = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        server, url = start_app(args.log)
        pid = server.pid
    load_before = os.getloadavg()[0]
    try:
        barrier = threading.Barrier(args.clients)
        results = [{} for _ in range(args.clients)]
        threads = [threading.Thread(target=visitor, args=(url, args, barrier, r)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        peak_kib = proc_kib(pid, "VmHWM") if pid else None
        rss_kib = proc_kib(pid, "VmRSS") if pid else None
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    firsts = [r["first_s"] for r in results if r.get("first_s") is not None]
    fulls = [r["full_s"] for r in results if r.get("ok")]
    details = next((r["details"] for r in results if r.get("ok")), {})
    params = (details.get("dense") or {}).get("parameters")
    figures = {
        "clients": args.clients, "answered": sum(bool(r.get("ok")) for r in results),
        "errors": [r["status"] for r in results if not r.get("ok")],
        "told_place_in_line": sum(bool(r.get("told_place")) for r in results),
        "first_text_s": {"p50": percentile(firsts, 0.5), "p95": percentile(firsts, 0.95), "max": max(firsts or [0])},
        "full_answer_s": {"p50": percentile(fulls, 0.5), "p95": percentile(fulls, 0.95), "max": max(fulls or [0])},
        "server_peak_rss_mib": round(peak_kib / 1024) if peak_kib else None,
        "server_rss_after_mib": round(rss_kib / 1024) if rss_kib else None,
        "dense_weights_mib": round(params * 4 / 2**20) if params else None,  # fp32 on CPU
        "model": details.get("model"), "removed": details.get("removed"), "order_source": details.get("order_source"),
        "new_tokens": args.new_tokens, "prompt": args.prompt, "cpus": os.cpu_count(),
        "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2),
    }
    log.info("%d of %d answered, %d told their place in line; errors: %s", figures["answered"], args.clients,
             figures["told_place_in_line"], figures["errors"] or "none")
    log.info("first dense text: p50 %s s, p95 %s s; full answer: p50 %s s, p95 %s s",
             figures["first_text_s"]["p50"], figures["first_text_s"]["p95"], figures["full_answer_s"]["p50"],
             figures["full_answer_s"]["p95"])
    log.info("server peak memory %s MiB (dense weights %s MiB); load average %s -> %s",
             figures["server_peak_rss_mib"], figures["dense_weights_mib"], figures["load_average_before"],
             figures["load_average_after"])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
