#!/usr/bin/env python3
"""Draws the per-token latency breakdown (I/O, memory management, compute) of each mode as a
stacked bar chart, like the paper's figures, from `flashlm bench --json` output. Uses gnuplot.

  bench/plot_breakdown.py bench/results/smollm2-all.json -o docs/breakdown-smollm2.png
"""
import argparse
import json
import subprocess
import tempfile
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="flashlm bench --json files (one or more)")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="flashlm: per-token latency by mode")
    args = parser.parse_args()
    rows = []
    for path in args.json:
        data = json.loads(Path(path).read_text())
        rows += data if isinstance(data, list) else [data]
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as dat:
        for r in rows:
            label = r.get("label", r["mode"]).replace(" ", "_")
            dat.write(f"{label} {r['ms_io']:.3f} {r['ms_mem']:.3f} {max(r['ms_compute'], 0):.3f}\n")
    script = f"""
set terminal pngcairo size 900,500 font ',11'
set output '{args.output}'
set title '{args.title}'
set ylabel 'ms per token'
set style data histograms
set style histogram rowstacked
set style fill solid 0.85 border -1
set boxwidth 0.6
set key outside right top
set grid ytics
set xtics rotate by -30
plot '{dat.name}' using 2:xtic(1) title 'I/O' lc rgb '#d62728', \\
     '' using 3 title 'memory management' lc rgb '#ff7f0e', \\
     '' using 4 title 'compute' lc rgb '#1f77b4'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
