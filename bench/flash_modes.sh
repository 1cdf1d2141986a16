#!/usr/bin/env bash
# The flash-store benchmark: each FFN mode in its own process on the standard workload
# (128-token prompt from the evaluation text, 256 greedy tokens), at a memory budget.
# `flashlm bench` runs every mode (dense excepted: the unlimited reference) inside a cgroup
# v1 memory limit equal to the budget, with the page cache dropped before each run, so the
# figures are what a machine of that size gets; that needs root (without it the modes run
# unconfined and bench says so). Usage:
#   bench/flash_modes.sh MODEL.flm [BUDGET=50%] [OUT_DIR=bench/results]
# Environment: MODES (default "dense naive hybrid mmap sparse"; sparse-oracle too, and each
#   sparse mode optionally with its read strategy: sparse:planned, sparse:streamed; default
#   auto), SPARSITY (level the sparse modes use, default 0: lossless; a level > 0 needs
#   `flashlm calibrate`, planned reads a trained predictor too), N_GEN (generated tokens,
#   default 256), CTX (-c, default 1024), WINDOW (neuron-cache window, default 4), PLOT (PNG
#   to draw, optional), ROUNDS (default 1: the modes run in turn ROUNDS times, A B C A B C
#   ..., and the table shows each figure's median over the rounds and "vs naive" as the
#   median of per-round ratios; the virtual disk here moves 15-50% between runs, so compare
#   modes on several rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bench/flash_modes.sh MODEL.flm [BUDGET] [OUT_DIR]}
budget=${2:-50%}
out=${3:-bench/results}
flashlm=${FLASHLM:-build/flashlm}
text=data/text/eval.txt
[ -f "$text" ] || scripts/fetch_text.sh
mkdir -p "$out"
name=$(basename "$model" .flm)
modes=${MODES:-dense naive hybrid mmap sparse}
sparsity=${SPARSITY:-0}
n_gen=${N_GEN:-256}
ctx=${CTX:-1024}
window=${WINDOW:-4}
rounds=${ROUNDS:-1}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
# run_mode MODE ROUND: one run, its JSON in $out/$name-MODE-rROUND.json.
run_mode() {
  local mode=$1 json=$out/$name-${1/:/-}-r$2.json
  local extra=() base=${mode%%:*}
  case $mode in sparse*) extra=(--sparsity "$sparsity" --window "$window") ;; esac
  case $mode in *:*) extra+=(--sparse-reads "${mode#*:}") ;; esac
  "$flashlm" bench -m "$model" --modes "$base" --mem-budget "$budget" -f "$text" -c "$ctx" \
    -n "$n_gen" "${extra[@]}" --json "$json"
}
rm -f "$out/$name"-*-r*.json
for round in $(seq "$rounds"); do
  for mode in $modes; do
    echo "== $mode (round $round of $rounds)"
    run_mode "$mode" "$round" 2>&1 | grep -v '^bench:'
  done
done
python3 - "$out" "$name" "$rounds" $modes <<'PY'
import json, statistics, sys, pathlib
out, name, rounds, modes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
runs = {}  # mode -> one result per round
for mode in modes:
    for k in range(1, rounds + 1):
        p = pathlib.Path(out) / f"{name}-{mode.replace(':', '-')}-r{k}.json"
        if p.exists():
            runs.setdefault(mode, []).append(json.loads(p.read_text())[0])
rows = []
for mode, results in runs.items():
    r = dict(results[0])  # tokens and names from the first round, figures the medians
    for key, value in r.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            r[key] = statistics.median(x[key] for x in results)
    r["label"] = f"{r['mode']} ({r['sparse_reads']})" if r.get("sparse_reads") else r["mode"]
    r["round_totals"] = [x["ms_total"] for x in results]
    if "naive" in runs and len(runs["naive"]) == len(results):
        r["vs_naive_per_round"] = [n["ms_total"] / x["ms_total"] for n, x in zip(runs["naive"], results)]
    rows.append(r)
dense = next((r for r in rows if r["mode"] == "dense"), None)
naive = next((r for r in rows if r["mode"] == "naive"), None)
print(f"\n| mode | I/O ms | mem ms | compute ms (select) | total ms | vs naive | MiB read/token | read MiB/s "
      f"| neurons loaded/token | cache hits | recall / precision | same tokens as dense | plan MiB | cgroup peak MiB | limit MiB | refaults |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    same = "-" if not dense else f"{100*sum(a==b for a,b in zip(r['tokens'], dense['tokens']))/len(r['tokens']):.1f}%"
    speed = f"{statistics.median(r['vs_naive_per_round']):.2f}x" if r.get("vs_naive_per_round") else "-"
    sparse = r["mode"].startswith("sparse")
    loaded = f"{r.get('neurons_loaded_per_token', 0):.0f}" if sparse else "-"
    hits = f"{100 * r.get('cache_hit_rate', 0):.1f}%" if sparse else "-"
    quality = (f"{100 * r['predictor_recall']:.1f}% / {100 * r['predictor_precision']:.1f}%"
               if r["mode"] == "sparse" and r.get("predictor_recall") else "-")
    print(f"| {r['label']} | {r['ms_io']:.2f} | {r['ms_mem']:.2f} | {r['ms_compute']:.2f} ({r.get('ms_select', 0):.2f}) "
          f"| {r['ms_total']:.2f} | {speed} | {r['bytes_read_per_token']/2**20:.2f} | {r['read_mib_per_s']:.0f} "
          f"| {loaded} | {hits} | {quality} | {same} | {r['plan_total_bytes']/2**20:.0f} "
          f"| {(r['cgroup_peak_bytes'] or r['peak_rss_bytes'])/2**20:.0f} "
          f"| {r['cgroup_limit_bytes']/2**20 if r['cgroup_limit_bytes'] else '-'} | {r['cgroup_refaults']} |")
if rounds > 1:
    print(f"\nms/token in each of the {rounds} rounds (and vs naive in that round):")
    for r in rows:
        ratios = r.get("vs_naive_per_round", [])
        print(f"  {r['label']}: " + ", ".join(
            f"{t:.1f}" + (f" ({q:.2f}x)" if ratios else "") for t, q in zip(r["round_totals"], ratios or r["round_totals"])))
json.dump(rows, open(pathlib.Path(out) / f"{name}-all.json", "w"), indent=1)
PY
if [ -n "${PLOT:-}" ]; then
  mkdir -p "$(dirname "$PLOT")"
  python3 bench/plot_breakdown.py "$out/$name-all.json" -o "$PLOT" \
    --title "$name: ms per token by mode, budget $budget in a cgroup (mmap: page faults count as compute)"
fi
