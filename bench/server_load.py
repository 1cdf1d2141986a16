#!/usr/bin/env python3
"""Bounded load on a local `flashlm serve`: N requests, C at a time, within a time limit.

Reports requests/s, latency p50/p90/p99, time to first token when streaming, and how many
requests the server turned away (503: its queue was full).

  bench/server_load.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf -n 32 -c 4
  bench/server_load.py --url http://127.0.0.1:8080 -n 100 -c 8 --stream --time-limit 60

With --model it starts build/flashlm serve on a free port and stops it at the end; with
--url it loads a server already running. Only loopback addresses are accepted: this is a
tool for measuring the server, not for loading other machines.
"""
import argparse
import http.client
import ipaddress
import json
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
                result.completion_tokens = json.loads(data)["usage"]["completion_tokens"]
            return result
        result = Result(200, 0.0)
        for raw in response:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if result.first_token_seconds is None and event.get("choices"):
                result.first_token_seconds = time.perf_counter() - start
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


def start_server(args) -> tuple[subprocess.Popen, str]:
    command = [str(args.binary), "serve", "-m", str(args.model), "--port", "0",
               "--max-queue", str(args.max_queue), *args.server_args]
    log = tempfile.NamedTemporaryFile("w+", prefix="flashlm-serve-", suffix=".log")
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    for line in server.stdout:
        if "listening on " in line:
            return server, line.split("listening on ")[1].split()[0]
    log.seek(0)
    sys.exit(f"error: the server did not start: {' '.join(command)}\n{log.read()}")


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
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.time_limit <= 0:
        sys.exit("error: --requests, --concurrency and --time-limit must be positive")

    server = None
    url = args.url
    if args.model:
        server, url = start_server(args)
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
