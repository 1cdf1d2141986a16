#!/usr/bin/env python3
"""Speculative decoding's draft sources side by side on one model and budget: `flashlm bench
--modes sparse` once per (file, draft source, text) in alternating rounds (the disk's speed
drifts between runs), each run in bench's cgroup at the budget (as root), and a table of
ms/token, tokens per flash pass, acceptance and draft/verify time, with a check that every
source generated the same tokens as plain decoding on the same file and text (greedy).

  python3 bench/draft_sources.py --files models/qwen.flm models/qwen-imp.flm \\
      --texts data/text/eval.txt /usr/lib/python3.11/textwrap.py --sources none self ngram \\
      --rounds 2 -- --mem-budget 50% -c 1024 -p 128 -n 48 -t 2
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(binary, model, text, source, extra):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [binary, "bench", "-m", model, "--modes", "sparse", "-f", text, "--json", out.name,
               *extra]
        if source != "none":
            cmd += ["--draft", *source.split()]  # "self --draft-p-min 0.5": a source and its flags
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
        return json.load(open(out.name))[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", nargs="+", required=True)
    ap.add_argument("--texts", nargs="+", required=True)
    ap.add_argument("--sources", nargs="+", default=["none", "self"],
                    help='draft sources, each with its own flags if any: "self --draft-p-min 0.5"')
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--binary", default=str(REPO / "build" / "flashlm"))
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="-- then bench's flags")
    a = ap.parse_args()
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    results = {}
    for rnd in range(a.rounds):
        for text in a.texts:
            for f in a.files:
                for s in a.sources:
                    r = run(a.binary, f, text, s, extra)
                    results.setdefault((f, text, s), []).append(r)
                    print(f"round {rnd + 1}: {Path(f).name} {Path(text).name} {s}: "
                          f"{r['ms_total']:.1f} ms/token, {r['tokens_per_pass']:.2f} tokens/pass",
                          file=sys.stderr, flush=True)
    print("| file | text | draft | ms/token (each round) | vs none | tokens/pass | acceptance "
          "| draft ms/token | verify ms/token | same tokens as none |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for text in a.texts:
        for f in a.files:
            base = results.get((f, text, "none"))
            for s in a.sources:
                rs = results[(f, text, s)]
                ms = [r["ms_total"] for r in rs]
                ratio = (f"{statistics.median([b['ms_total'] for b in base]) / statistics.median(ms):.2f}x"
                         if base else "-")
                same = all(r["tokens"] == base[0]["tokens"] for r in rs) if base else "-"
                print(f"| {Path(f).name} | {Path(text).name} | {s} | "
                      f"{', '.join(f'{m:.0f}' for m in ms)} | {ratio} | "
                      f"{statistics.mean(r['tokens_per_pass'] for r in rs):.2f} | "
                      f"{100 * statistics.mean(r['draft_acceptance'] for r in rs):.1f}% | "
                      f"{statistics.mean(r['ms_draft'] for r in rs):.1f} | "
                      f"{statistics.mean(r['ms_verify'] for r in rs):.1f} | "
                      f"{'yes' if same is True else 'NO' if same is False else '-'} |")


if __name__ == "__main__":
    main()
