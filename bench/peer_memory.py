#!/usr/bin/env python3
"""flashlm against llama.cpp in the same memory: both inside one cgroup v1 memory limit.

For each limit (30%, 50%, 70% of the GGUF plus llama.cpp's own non-weight memory, measured
here: its all-in-RAM cgroup peak minus the file size), page cache dropped before each run:
- llama.cpp through llama-cpp-python: mmap (its default), -c 1024, 2 threads, the GGUF;
- flashlm: `flashlm bench --modes sparse,hybrid --mem-budget LIMIT --cgroup on` on the .flm
  converted from that GGUF (each mode in its own child inside the same limit), lossless
  (--sparsity 0: every neuron computed, so its tokens equal dense's).
Standard workload: the first 128 tokens of data/text/eval.txt, greedy, N generated tokens.
Rounds alternate llama.cpp and flashlm; the table shows medians, ms/token and peak cgroup
usage for both, and flashlm's fastest mode against llama.cpp. Needs root (cgroup v1).

  pip install llama-cpp-python==0.3.36
  python3 bench/peer_memory.py [--gguf models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf]
                               [--flm models/qwen.flm] [--percents 30 50 70] [--n-gen 64]
                               [--rounds 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3")


def in_cgroup(command, limit, timeout=None):
    """Runs `command` inside a fresh memory cgroup (limit in bytes, 0: none), cold page
    cache; returns (stdout, peak bytes, oom kills, exit code, stderr). Past `timeout`
    seconds the command is killed and the exit code is None."""
    group = CGROUP_ROOT / f"flashlm-peer-{os.getpid()}"
    group.mkdir()
    try:
        if limit:
            (group / "memory.limit_in_bytes").write_text(str(limit))
        drop_page_cache()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
        except subprocess.TimeoutExpired as e:
            done = subprocess.CompletedProcess(command, None, e.stdout or "", e.stderr or "")
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        oom = (group / "memory.oom_control").read_text()
        kills = int(oom.split("oom_kill ")[1].split()[0]) if "oom_kill " in oom else 0
        return done.stdout, peak, kills, done.returncode, done.stderr
    finally:
        group.rmdir()


def llama_child(gguf, text, n_prompt, n_gen, threads):
    """Inside the cgroup: load, prefill, decode greedily; print the timings as JSON."""
    sys.path.insert(0, str(ROOT / "scripts" / "reference"))
    import numpy as np
    from llama_cpp_plain import Llama, llama_cpp
    llm = Llama(model_path=gguf, n_ctx=1024, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(Path(text).read_bytes()[:64 * 1024], add_bos=True,
                          special=False)[:n_prompt]
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    tokens, decode = [], 0.0
    for _ in range(n_gen):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                       shape=(llm.n_vocab(),))
        token = int(np.argmax(logits))
        tokens.append(token)
        start = time.perf_counter()
        llm.eval([token])
        decode += time.perf_counter() - start
    print(json.dumps({"prefill_ms": prefill * 1e3, "ms_total": decode * 1e3 / n_gen,
                      "tokens": tokens}))


def run_llama(args, limit):
    out, peak, kills, code, err = in_cgroup(
        [sys.executable, __file__, "--llama-child", "--gguf", args.gguf, "--text", args.text,
         "--n-prompt", str(args.n_prompt), "--n-gen", str(args.n_gen),
         "--threads", str(args.threads)], limit)
    if code != 0:
        return {"killed": kills > 0, "peak": peak, "error": err[-500:]}
    r = json.loads(out.strip().splitlines()[-1])
    r.update(killed=False, peak=peak)
    return r


def run_flashlm(args, limit, with_dense):
    # Dense (all in DRAM, outside any limit) is the quality reference: bench then reports
    # each mode's greedy tokens against it.
    modes = "dense,sparse,hybrid" if with_dense else "sparse,hybrid"
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        done = subprocess.run(
            [args.flashlm, "bench", "-m", args.flm, "--modes", modes, "--mem-budget",
             str(limit), "--cgroup", "on", "-c", "1024", "-f", args.text, "-p",
             str(args.n_prompt), "-n", str(args.n_gen), "-t", str(args.threads),
             "--json", f.name], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"flashlm bench failed:\n{done.stderr[-2000:]}")
        return {r["mode"]: r for r in json.load(open(f.name))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flashlm", default=str(ROOT / "build" / "flashlm"))
    ap.add_argument("--gguf", default=str(ROOT / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--flm", default=str(ROOT / "models" / "qwen.flm"))
    ap.add_argument("--text", default=str(ROOT / "data" / "text" / "eval.txt"))
    ap.add_argument("--percents", type=int, nargs="*", default=[30, 50, 70])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--llama-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_child:
        return llama_child(args.gguf, args.text, args.n_prompt, args.n_gen, args.threads)
    if os.geteuid() != 0 or not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        raise SystemExit("needs root and a cgroup v1 memory controller at /sys/fs/cgroup/memory")
    if not Path(args.flm).exists():
        subprocess.run([args.flashlm, "convert", "-m", args.gguf, "-o", args.flm], check=True)

    gguf_bytes = Path(args.gguf).stat().st_size
    free = run_llama(args, 0)
    overhead = free["peak"] - gguf_bytes
    mib = lambda b: b / 2**20
    print(f"llama.cpp all in RAM: peak {mib(free['peak']):.0f} MiB, {free['ms_total']:.1f} "
          f"ms/token; non-weight memory {mib(overhead):.0f} MiB (peak minus the "
          f"{mib(gguf_bytes):.0f} MiB GGUF)", flush=True)
    limits = [(p, int(p / 100 * gguf_bytes + overhead)) for p in args.percents]
    results = {p: {"llama": [], "flashlm": []} for p, _ in limits}
    for k in range(args.rounds):
        for p, limit in limits:
            ll = run_llama(args, limit)
            fl = run_flashlm(args, limit, with_dense=k == 0)
            fl.pop("dense", None)
            results[p]["llama"].append(ll)
            results[p]["flashlm"].append(fl)
            llama_text = ("killed by the limit" if ll["killed"] else
                          f"{ll['ms_total']:.1f} ms/token" if "ms_total" in ll else "failed")
            flash_text = ", ".join(f"{m} {r['ms_total']:.1f} ms/token peak "
                                   f"{mib(r['cgroup_peak_bytes']):.0f} MiB" for m, r in fl.items())
            print(f"round {k + 1}, {p}% ({mib(limit):.0f} MiB): llama.cpp {llama_text}, peak "
                  f"{mib(ll['peak']):.0f} MiB; flashlm {flash_text}", flush=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"\n{Path(args.gguf).name}, {os.cpu_count()} cores ({cpu}), {time.strftime('%Y-%m-%d')}; "
          f"prompt {args.n_prompt} tokens of {Path(args.text).name}, {args.n_gen} greedy tokens, "
          f"{args.threads} threads, -c 1024, page cache dropped before each run, median of "
          f"{args.rounds} alternating rounds\n")
    print("| limit | llama.cpp ms/token | llama.cpp peak MiB | flashlm sparse ms/token | "
          "flashlm hybrid ms/token | flashlm peak MiB (fastest) | fastest vs llama.cpp | "
          "flashlm tokens = its dense's | first tokens = llama.cpp's |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p, limit in limits:
        ll = [r for r in results[p]["llama"] if not r["killed"] and "ms_total" in r]
        fl = results[p]["flashlm"]
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        llama_ms = med([r["ms_total"] for r in ll])
        sparse_ms = med([r["sparse"]["ms_total"] for r in fl])
        hybrid_ms = med([r["hybrid"]["ms_total"] for r in fl])
        fastest = "sparse" if sparse_ms <= hybrid_ms else "hybrid"
        peak = med([r[fastest]["cgroup_peak_bytes"] for r in fl])
        # Quality: the fastest mode's greedy tokens against flashlm dense (the same numerics:
        # lossless modes must give the same tokens) and against llama.cpp (other numerics:
        # the two agree until a near tie picks another token, then the texts part).
        dense = fl[0][fastest]["agreement_with_dense"]
        dense_same = f"{100 * dense:.0f}%" if dense >= 0 else "-"
        same = "-"
        if ll:
            a, b = ll[0]["tokens"], fl[0][fastest]["tokens"]
            prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
            same = f"{prefix}/{len(a)}"
        print(f"| {p}% of the GGUF + {mib(overhead):.0f} MiB = {mib(limit):.0f} MiB | "
              f"{llama_ms:.1f} | {mib(med([r['peak'] for r in ll])):.0f} | {sparse_ms:.1f} | "
              f"{hybrid_ms:.1f} | {mib(peak):.0f} ({fastest}) | {llama_ms / min(sparse_ms, hybrid_ms):.2f}x | "
              f"{dense_same} | {same} |")


if __name__ == "__main__":
    main()
