#!/usr/bin/env python3
"""Bounded load on a local `flashlm serve`: N requests, C at a time, within a time limit.

Reports requests/s, latency p50/p90/p99, time to first token when streaming, and how many
requests the server turned away (503: its queue was full).

  bench/server_load.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf -n 32 -c 4
  bench/server_load.py --url http://127.0.0.1:8080 -n 100 -c 8 --stream --time-limit 60

--sweep measures continuous batching (`serve --parallel N`): for each N a fresh server with
--parallel N, inside a cgroup v1 memory limit equal to its plan's budget when run as root
(page cache dropped first), gets N different greedy requests at once (prompts cut from
--prompts-file); N=1 gets all of them one after the other, which is also each request's
answer alone: every answer under load must equal it. The N values alternate over --rounds
(the disk's speed moves between runs) and the table shows medians:

  bench/server_load.py --model models/qwen.flm --sweep 1 2 4 8 --rounds 2 --max-tokens 32 \
      --prompts-file data/text/eval.txt --server-args --mem-budget 50% -c 1280 -t 2

With --model it starts build/flashlm serve on a free port and stops it at the end; with
--url it loads a server already running. Only loopback addresses are accepted: this is a
tool for measuring the server, not for loading other machines.
"""
import argparse
import http.client
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    status: int  # 0: no HTTP answer (connection failed or timed out)
    seconds: float
    first_token_seconds: float | None = None
    completion_tokens: int = 0
    text: str = ""


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


def request_body(args, i: int) -> dict:
    body = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": i,
            "stream": args.stream}
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        body["prompt"] = args.prompt
    return body


def one_request(host: str, port: int, path: str, body: dict, timeout: float) -> Result:
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200 or not body["stream"]:
            data = response.read()
            result = Result(response.status, time.perf_counter() - start)
            if response.status == 200:
                answer = json.loads(data)
                result.completion_tokens = answer["usage"]["completion_tokens"]
                choice = answer["choices"][0]
                result.text = choice["message"]["content"] if "message" in choice else choice["text"]
            return result
        result = Result(200, 0.0)
        for raw in response:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if result.first_token_seconds is None and event.get("choices"):
                result.first_token_seconds = time.perf_counter() - start
            for choice in event.get("choices") or []:
                delta = choice.get("delta", {}).get("content") if "delta" in choice else None
                result.text += delta if delta is not None else choice.get("text") or ""
            if event.get("usage"):
                result.completion_tokens = event["usage"]["completion_tokens"]
        result.seconds = time.perf_counter() - start
        return result
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return Result(0, time.perf_counter() - start)
    finally:
        conn.close()


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def run_load(args, host: str, port: int) -> dict:
    path = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
    results: list[Result] = []
    lock = threading.Lock()
    next_index = 0
    deadline = time.monotonic() + args.time_limit

    def worker():
        nonlocal next_index
        while time.monotonic() < deadline:
            with lock:
                if next_index >= args.requests:
                    return
                i = next_index
                next_index += 1
            remaining = max(1.0, deadline - time.monotonic())
            result = one_request(host, port, path, request_body(args, i), remaining)
            with lock:
                results.append(result)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    ok = [r for r in results if r.status == 200]
    report = {
        "endpoint": path, "stream": args.stream, "concurrency": args.concurrency,
        "max_tokens": args.max_tokens, "sent": len(results), "ok": len(ok),
        "rejected_503": sum(r.status == 503 for r in results),
        "failed": sum(r.status not in (200, 503) for r in results),
        "not_sent": args.requests - len(results), "wall_seconds": wall,
        "requests_per_second": len(ok) / wall if wall > 0 else 0.0,
        "completion_tokens_per_second": sum(r.completion_tokens for r in ok) / wall
        if wall > 0 else 0.0,
    }
    if ok:
        latencies = [r.seconds for r in ok]
        for p in (50, 90, 99):
            report[f"latency_p{p}_seconds"] = percentile(latencies, p)
        first = [r.first_token_seconds for r in ok if r.first_token_seconds is not None]
        if first:
            report["first_token_p50_seconds"] = percentile(first, 50)
    return report


def print_report(report: dict) -> None:
    print(f"{report['endpoint']} stream={report['stream']} concurrency={report['concurrency']} "
          f"max_tokens={report['max_tokens']}")
    print(f"  requests: {report['ok']} ok, {report['rejected_503']} rejected (503), "
          f"{report['failed']} failed, {report['not_sent']} not sent (time limit)")
    print(f"  throughput: {report['requests_per_second']:.2f} requests/s, "
          f"{report['completion_tokens_per_second']:.1f} tokens/s "
          f"over {report['wall_seconds']:.1f} s")
    if "latency_p50_seconds" in report:
        print("  latency: " + ", ".join(
            f"p{p} {report[f'latency_p{p}_seconds'] * 1000:.0f} ms" for p in (50, 90, 99)))
    if "first_token_p50_seconds" in report:
        print(f"  first token: p50 {report['first_token_p50_seconds'] * 1000:.0f} ms")


def start_server(args, extra=(), preexec_fn=None) -> tuple[subprocess.Popen, str, str]:
    """The server, its address and what it printed at start (the memory plan)."""
    command = [str(args.binary), "serve", "-m", str(args.model), "--port", "0",
               "--max-queue", str(args.max_queue), *args.server_args, *extra]
    log = tempfile.NamedTemporaryFile("w+", prefix="flashlm-serve-", suffix=".log")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                              preexec_fn=preexec_fn)
    for line in server.stdout:
        if "listening on " in line:
            log.seek(0)
            return server, line.split("listening on ")[1].split()[0], log.read()
    log.seek(0)
    sys.exit(f"error: the server did not start: {' '.join(command)}\n{log.read()}")


CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def can_limit_memory() -> bool:
    return os.geteuid() == 0 and (CGROUP_ROOT / "memory.limit_in_bytes").exists()


def plan_budget_bytes(plan: str) -> int:
    """The budget line of the memory plan the server prints at start ("budget X MiB")."""
    found = re.search(r"budget ([0-9.]+) MiB", plan)
    if not found:
        sys.exit(f"error: no memory budget in the server's plan (pass --mem-budget in "
                 f"--server-args):\n{plan}")
    return int(float(found.group(1)) * 2**20 + 0.05 * 2**20)  # the plan rounds to 0.1 MiB


def sweep_prompts(args, count: int) -> list[str]:
    """`count` different prompts of --prompt-chars characters, cut from --prompts-file."""
    text = " ".join(Path(args.prompts_file).read_text(errors="replace").split())
    stride = max(args.prompt_chars, (len(text) - args.prompt_chars) // max(count, 1))
    prompts = [text[i * stride:i * stride + args.prompt_chars] for i in range(count)]
    if any(len(p) < args.prompt_chars for p in prompts):
        sys.exit(f"error: {args.prompts_file} is too short for {count} prompts")
    return prompts


def sweep_once(args, n: int, prompts: list[str], limit: int) -> dict:
    """One server with --parallel n inside a fresh memory cgroup (limit 0: none)."""
    group = CGROUP_ROOT / f"flashlm-load-{os.getpid()}-{n}" if limit else None
    preexec = None
    if group:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
        preexec = lambda: (group / "cgroup.procs").write_text(str(os.getpid()))  # noqa: E731
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3")
    server, url, _ = start_server(args, ["--parallel", str(n)], preexec)
    try:
        address = urlparse(url)
        bodies = [{"prompt": p, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}} for p in prompts]
        results: list[Result | None] = [None] * len(bodies)
        barrier = threading.Barrier(n)
        next_index = 0
        lock = threading.Lock()

        def worker():
            nonlocal next_index
            barrier.wait()
            while True:
                with lock:
                    if next_index >= len(bodies):
                        return
                    i = next_index
                    next_index += 1
                results[i] = one_request(address.hostname, address.port, "/v1/completions",
                                         bodies[i], args.time_limit)

        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
        peak = hits = refaults = 0
        if group:
            peak = int((group / "memory.max_usage_in_bytes").read_text())
            hits = int((group / "memory.failcnt").read_text())
            # File pages read back after the limit evicted them: thrashing (0 is healthy).
            for line in (group / "memory.stat").read_text().splitlines():
                key, value = line.split()
                if key in ("workingset_refault_file", "workingset_refault"):
                    refaults = int(value)
            group.rmdir()
    failed = [i for i, r in enumerate(results) if r is None or r.status != 200]
    if failed:
        sys.exit(f"error: --parallel {n}: requests {failed} failed")
    tokens = sum(r.completion_tokens for r in results)
    return {"parallel": n, "requests": len(results), "wall_seconds": wall,
            "tokens": tokens, "tokens_per_second": tokens / wall,
            "latency_p50_seconds": percentile([r.seconds for r in results], 50),
            "first_token_p50_seconds": percentile([r.first_token_seconds for r in results], 50),
            "texts": [r.text for r in results], "cgroup_limit_bytes": limit,
            "cgroup_peak_bytes": peak, "cgroup_limit_hits": hits, "cgroup_refaults": refaults}


def run_sweep(args) -> None:
    most = max(args.sweep)
    prompts = sweep_prompts(args, most)
    limits = {}
    if can_limit_memory():
        for n in args.sweep:  # the plan's budget, read from a server that is stopped at once
            server, _, plan = start_server(args, ["--parallel", str(n)])
            server.terminate()
            server.wait(timeout=30)
            limits[n] = plan_budget_bytes(plan)
    else:
        print("note: not root or no cgroup v1 memory controller: no memory limit enforced")
    runs: dict[int, list[dict]] = {n: [] for n in args.sweep}
    for r in range(args.rounds):
        for n in args.sweep:
            # N=1 answers every prompt alone, one after the other; N>1 the first N at once.
            run = sweep_once(args, n, prompts if n == 1 else prompts[:n], limits.get(n, 0))
            runs[n].append(run)
            print(f"round {r + 1} --parallel {n}: {run['tokens_per_second']:.2f} tokens/s, "
                  f"{run['wall_seconds']:.1f} s, peak {run['cgroup_peak_bytes'] / 2**20:.1f} MiB",
                  flush=True)

    def median(values):
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    alone = runs[1][0]["texts"] if 1 in runs else None
    base = median([x["tokens_per_second"] for x in runs[1]]) if 1 in runs else None
    print(f"\n{args.model}, {args.max_tokens} greedy tokens per request, prompts of "
          f"{args.prompt_chars} characters, {' '.join(args.server_args)}; medians of "
          f"{args.rounds} rounds")
    print("| --parallel | requests | aggregate tokens/s (rounds) | vs one request | "
          "latency p50 s | first token p50 s | answers = alone | cgroup limit / peak MiB "
          "| limit hits | refaults |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary = []
    for n, rs in runs.items():
        tps = median([x["tokens_per_second"] for x in rs])
        rounds = "/".join(f"{x['tokens_per_second']:.2f}" for x in rs)
        # Each answer under load against the same prompt's answer alone (N=1, first round).
        compared = [(x["texts"][i], alone[i]) for x in rs for i in range(len(x["texts"]))] \
            if alone else []
        same = f"{sum(a == b for a, b in compared)}/{len(compared)}" if compared else "-"
        ratio = f"{tps / base:.2f}x" if base else "-"
        print(f"| {n} | {rs[0]['requests']} | {tps:.2f} ({rounds}) | {ratio} | "
              f"{median([x['latency_p50_seconds'] for x in rs]):.1f} | "
              f"{median([x['first_token_p50_seconds'] for x in rs]):.1f} | {same} | "
              f"{rs[0]['cgroup_limit_bytes'] / 2**20:.1f} / "
              f"{max(x['cgroup_peak_bytes'] for x in rs) / 2**20:.1f} | "
              f"{sum(x['cgroup_limit_hits'] for x in rs)} | "
              f"{sum(x['cgroup_refaults'] for x in rs)} |")
        summary.append({"parallel": n, "tokens_per_second": tps, "runs": rs})
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    target.add_argument("--model", type=Path, help="start a server for this model")
    parser.add_argument("--binary", type=Path, default=REPO / "build" / "flashlm")
    parser.add_argument("--max-queue", type=int, default=8, help="with --model: its --max-queue")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                        help="with --model: more flags for flashlm serve (put last)")
    parser.add_argument("-n", "--requests", type=int, default=32)
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=120,
                        help="seconds; no request starts after it")
    parser.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--prompt", default="Write a short paragraph about the sea.")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--sweep", type=int, nargs="+",
                        help="with --model: --parallel values to measure (see above)")
    parser.add_argument("--rounds", type=int, default=1, help="with --sweep")
    parser.add_argument("--prompts-file", default=str(REPO / "data" / "text" / "eval.txt"),
                        help="with --sweep: text the prompts are cut from")
    parser.add_argument("--prompt-chars", type=int, default=400, help="with --sweep")
    parser.add_argument("--json-file", help="with --sweep: write every run here")
    args = parser.parse_args()
    if args.sweep:
        if not args.model or min(args.sweep) < 1 or args.rounds < 1:
            sys.exit("error: --sweep needs --model, values of at least 1 and --rounds >= 1")
        run_sweep(args)
        return
    if args.requests < 1 or args.concurrency < 1 or args.time_limit <= 0:
        sys.exit("error: --requests, --concurrency and --time-limit must be positive")

    server = None
    url = args.url
    if args.model:
        server, url, _ = start_server(args)
    try:
        address = urlparse(url)
        if not address.hostname or not is_loopback(address.hostname):
            sys.exit(f"error: {url} is not a loopback address; this tool loads local servers only")
        report = run_load(args, address.hostname, address.port or 80)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
