#!/usr/bin/env python3
"""Decode speed on flash against its peers, all in ONE cgroup memory limit that covers the
whole process (issue 12's targets), side by side in alternating rounds:

- llama.cpp (llama-cpp-python, mmap, its default) inside the limit;
- flashlm naive (the paper's baseline: every non-resident weight read per token, no cache) and
  streamed sparse, each in a child inside the same limit, plain decoding (`--draft none`);
- flashlm streamed sparse with each draft source given (`--draft self`, ...), same limit;
- flashlm dense (the .flm's bundles, and the GGUF itself) and llama.cpp with everything in
  DRAM (no limit): the speed to approach.
- more .flm files after the first (`--flm A.flm B.flm`: other `--down-type`s or neuron
  orders): their streamed sparse and drafted rows in the same limit and rounds, each checked
  against the dense tokens of its own file (fewer bytes per pass cost perplexity: measure it
  with `flashlm perplexity`).

The limit is a share of the GGUF's bytes (50%: 532.8 MiB for Qwen2.5-Coder-1.5B) and is both
llama.cpp's cgroup limit and flashlm's --mem-budget (which then covers weights, KV cache,
buffers and the process itself). Quality beside speed: every flashlm run's greedy tokens are
checked against flashlm dense's (lossless modes and exact speculative decoding give the same
tokens), and llama.cpp's first tokens against flashlm dense's. Page cache dropped before every
run. Needs root (cgroup v1) and llama-cpp-python.

  pip install llama-cpp-python==0.3.36
  python3 bench/decode_vs_peers.py --gguf models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \\
      --flm models/qwen-imp.flm --texts data/text/eval.txt /usr/lib/python3.11/textwrap.py \\
      --percent 50 --drafts "self" --rounds 2 --n-gen 48
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_memory  # noqa: E402  (in_cgroup, the llama.cpp child)

ROOT = Path(__file__).resolve().parents[1]


def llama(args, text, limit):
    out, peak, kills, code, err = peer_memory.in_cgroup(
        [sys.executable, str(Path(peer_memory.__file__)), "--llama-child", "--gguf", args.gguf,
         "--text", text, "--n-prompt", str(args.n_prompt), "--n-gen", str(args.n_gen),
         "--threads", str(args.threads)], limit, timeout=args.llama_timeout if limit else None)
    if code is None:
        return f"not done in {args.llama_timeout} s (thrashing in the limit)"
    if code != 0 and kills:
        return "killed by the limit"  # it cannot hold what llama.cpp needs
    if code != 0:
        raise SystemExit(f"llama.cpp failed (limit {limit}): {err[-800:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak"] = peak
    return r


def flashlm(args, text, limit, modes, draft, model=None):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        budget = ["--mem-budget", str(limit), "--cgroup", "on"] if limit else []
        cmd = [args.flashlm, "bench", "-m", model or args.flm, "--modes", modes, *budget,
               "-c", str(args.ctx), "-f", text, "-p", str(args.n_prompt), "-n", str(args.n_gen),
               "-t", str(args.threads), "--json", f.name]
        if draft != "none":
            cmd += ["--draft", *draft.split()]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        return {r["mode"]: r for r in json.load(open(f.name))}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flashlm", default=str(ROOT / "build" / "flashlm"))
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--flm", required=True, nargs="+",
                    help="the .flm to measure; more files (other --down-type or neuron order) "
                         "add their own sparse and drafted rows in the same rounds, each checked "
                         "against its own dense tokens")
    ap.add_argument("--texts", nargs="+", default=[str(ROOT / "data" / "text" / "eval.txt")])
    ap.add_argument("--percent", type=float, default=50)
    ap.add_argument("--drafts", nargs="*", default=["self"],
                    help='draft sources for the sparse mode, each with its flags: "self --draft-width 3"')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=48)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--llama-timeout", type=float, default=900,
                    help="seconds llama.cpp may take in the limit before it counts as not done")
    args = ap.parse_args()
    if os.geteuid() != 0 or not (peer_memory.CGROUP_ROOT / "memory.limit_in_bytes").exists():
        raise SystemExit("needs root and a cgroup v1 memory controller at /sys/fs/cgroup/memory")

    limit = int(args.percent / 100 * Path(args.gguf).stat().st_size)
    mib = lambda b: b / 2**20
    rows = {}  # (text, name) -> list of {"ms", "tpp", "tokens", "peak"}
    refs = {}  # name -> the row whose tokens are its quality reference (flashlm dense, same file)
    failures = {}  # text -> why llama.cpp gave no figure in the limit, each such round

    def add(text, name, ms, tokens, peak=0, tpp=1.0, ref="flashlm dense in DRAM"):
        rows.setdefault((text, name), []).append(dict(ms=ms, tokens=tokens, peak=peak, tpp=tpp))
        refs[name] = ref

    for k in range(args.rounds):
        for text in args.texts:
            ll = llama(args, text, limit)
            if isinstance(ll, dict):
                add(text, "llama.cpp (mmap)", ll["ms_total"], ll["tokens"], ll["peak"])
            else:
                print(f"llama.cpp in the {mib(limit):.1f} MiB limit, {Path(text).name}: {ll}",
                      file=sys.stderr)
                failures.setdefault(text, []).append(ll)
            plain = flashlm(args, text, limit, "dense,naive,sparse" if k == 0 else "naive,sparse",
                            "none", model=args.flm[0])
            if "dense" in plain:
                add(text, "flashlm dense in DRAM", plain["dense"]["ms_total"], plain["dense"]["tokens"])
            for mode in ("naive", "sparse"):
                r = plain[mode]
                add(text, f"flashlm {mode}", r["ms_total"], r["tokens"], r["cgroup_peak_bytes"])
            for d in args.drafts:
                r = flashlm(args, text, limit, "sparse", d, model=args.flm[0])["sparse"]
                add(text, f"flashlm sparse --draft {d}", r["ms_total"], r["tokens"],
                    r["cgroup_peak_bytes"], r["tokens_per_pass"])
            for other in args.flm[1:]:
                name = Path(other).name
                dense = f"flashlm dense in DRAM ({name})"
                p = flashlm(args, text, limit, "dense,sparse" if k == 0 else "sparse", "none",
                            model=other)
                if "dense" in p:
                    add(text, dense, p["dense"]["ms_total"], p["dense"]["tokens"], ref=dense)
                add(text, f"flashlm sparse ({name})", p["sparse"]["ms_total"],
                    p["sparse"]["tokens"], p["sparse"]["cgroup_peak_bytes"], ref=dense)
                for d in args.drafts:
                    r = flashlm(args, text, limit, "sparse", d, model=other)["sparse"]
                    add(text, f"flashlm sparse --draft {d} ({name})", r["ms_total"], r["tokens"],
                        r["cgroup_peak_bytes"], r["tokens_per_pass"], ref=dense)
            if k == 0:
                # Plain dense decoding of the GGUF itself (its own row layout, no bundles): the
                # fastest flashlm decodes with everything in DRAM.
                r = flashlm(args, text, 0, "dense", "none", model=args.gguf)["dense"]
                add(text, "flashlm dense in DRAM, the GGUF", r["ms_total"], r["tokens"])
                free = llama(args, text, 0)
                add(text, "llama.cpp in DRAM", free["ms_total"], free["tokens"])
            print(f"round {k + 1} {Path(text).name}: " + ", ".join(
                f"{n} {v[-1]['ms']:.1f}" for (t, n), v in rows.items() if t == text and
                len(v) == k + 1),
                file=sys.stderr, flush=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    print(f"\n{Path(args.gguf).name} / {', '.join(Path(f).name for f in args.flm)}, limit {args.percent:g}% of the GGUF "
          f"= {mib(limit):.1f} MiB (cgroup for every limited row, flashlm's --mem-budget), "
          f"{os.cpu_count()} cores ({cpu}), {time.strftime('%Y-%m-%d')}; prompt {args.n_prompt} "
          f"tokens, {args.n_gen} greedy tokens, {args.threads} threads, medians of {args.rounds} "
          f"alternating rounds (DRAM rows: round 1)\n")
    med = lambda xs: statistics.median(xs)
    ratio = lambda a, b: "-" if a != a else f"{a / b:.2f}x"  # a NaN: no figure to compare
    for text in args.texts:
        ref = {n: med([r["ms"] for r in v]) for (t, n), v in rows.items() if t == text}
        plain = "flashlm dense in DRAM, the GGUF"
        ref.setdefault("llama.cpp (mmap)", float("nan"))
        if failures.get(text):
            print(f"llama.cpp in the limit: {'; '.join(failures[text])}\n")
        print(f"{Path(text).name}:\n")
        print("| engine / mode | ms/token (rounds) | tokens/pass | vs naive | vs llama.cpp in the "
              "limit | vs plain dense decoding in DRAM (the GGUF) | peak MiB | tokens = flashlm "
              "dense's (same .flm) |")
        print("|---|---|---|---|---|---|---|---|")
        for (t, name), v in rows.items():
            if t != text:
                continue
            ms = ref[name]
            dense = rows[(text, refs[name])][0]["tokens"]  # flashlm dense of the same file
            same = [sum(a == b for a, b in zip(r["tokens"], dense)) for r in v]
            prefix = [next((i for i, (a, b) in enumerate(zip(r["tokens"], dense)) if a != b),
                           len(dense)) for r in v]
            quality = (f"{min(same)}/{len(dense)}" if not name.startswith("llama") and
                       "GGUF" not in name else
                       f"first {min(prefix)}/{len(dense)} (other numerics)")
            peak = med([r["peak"] for r in v])
            each = "/".join(f"{r['ms']:.0f}" for r in v)
            print(f"| {name} | {ms:.1f} ({each}) | "
                  f"{med([r['tpp'] for r in v]):.2f} | {ref['flashlm naive'] / ms:.2f}x | "
                  f"{ratio(ref['llama.cpp (mmap)'], ms)} | {ref[plain] / ms:.2f}x | "
                  f"{mib(peak):.0f} | {quality} |" if peak else
                  f"| {name} | {ms:.1f} | {med([r['tpp'] for r in v]):.2f} | "
                  f"{ref['flashlm naive'] / ms:.2f}x | {ratio(ref['llama.cpp (mmap)'], ms)} | "
                  f"{ref[plain] / ms:.2f}x | (no limit) | {quality} |")
        print()


if __name__ == "__main__":
    main()
