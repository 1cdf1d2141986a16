#!/usr/bin/env bash
# The flash-store benchmark: each FFN mode in its own process on the standard workload
# (128-token prompt from the evaluation text, 256 greedy tokens), at a memory budget.
# The mmap mode runs inside a cgroup v1 memory limit equal to the budget plus the process's
# non-weight needs, with the page cache dropped before each run, so the OS really has to
# evict; that needs root. Usage:
#   bench/flash_modes.sh MODEL.flm [BUDGET=50%] [OUT_DIR=bench/results]
# Environment: MODES (default "dense naive hybrid mmap"; add sparse-oracle and sparse, each
#   optionally with its read strategy: sparse:planned, sparse:streamed; default auto),
#   SPARSITY (calibrated level the sparse modes use, default 0.5), N_GEN (generated tokens,
#   default 256), WINDOW (neuron-cache window, default 4), PLOT (PNG to draw, optional),
#   ROUNDS (default 1: the modes run in turn ROUNDS times, A B C A B C ..., and the table shows
#   each figure's median over the rounds and "vs naive" as the median of per-round ratios; the
#   virtual disk here moves 15-50% between runs, so compare modes on several rounds).
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
# KV cache, activations, code and allocator slack: what the process needs besides weights
# (measured from the dense run when there is one; see run_mode).
overhead_mib=${OVERHEAD_MIB:-100}
modes=${MODES:-dense naive hybrid mmap}
sparsity=${SPARSITY:-0.5}
n_gen=${N_GEN:-256}
window=${WINDOW:-4}
rounds=${ROUNDS:-1}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
drop_page_cache() {
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(cannot drop the page cache: not root)"
}
# run_mode MODE ROUND: one run, its JSON in $out/$name-MODE-rROUND.json.
run_mode() {
  local mode=$1 json=$out/$name-${1/:/-}-r$2.json
  if [ "$mode" = mmap ] && [ -w /sys/fs/cgroup/memory ]; then
    local bytes
    bytes=$("$flashlm" bench -m "$model" --modes dense --mem-budget 1000000G -n 1 -p 1 -f "$text" 2>&1 |
      sed -n 's/.*budget \([0-9.]*\) MiB of a \([0-9.]*\) MiB model.*/\2/p' | head -1)
    # What the process needs besides weights (KV cache, activations, code): the dense run's
    # peak RSS minus the model, when the dense run came first.
    local dense_json=$out/$name-dense-r1.json
    if [ -z "${OVERHEAD_MIB:-}" ] && [ -f "$dense_json" ]; then
      overhead_mib=$(python3 -c "import json; r=json.load(open('$dense_json'))[0]; print(max(16, int(r['rss_bytes']/2**20 - float('$bytes')) + 8))")
    fi
    local limit_mib
    limit_mib=$(python3 -c "b='$budget'; m=float('$bytes'); print(int((m*float(b[:-1])/100 if b.endswith('%') else float(b.rstrip('MG'))*(1024 if b.endswith('G') else 1)) + $overhead_mib))")
    local cg=/sys/fs/cgroup/memory/flashlm-bench-$$
    mkdir -p "$cg"
    echo $((limit_mib * 1024 * 1024)) > "$cg/memory.limit_in_bytes"
    echo "mmap: cgroup memory limit ${limit_mib} MiB (budget + ${overhead_mib} MiB for KV cache, activations, code)"
    # Cold start, after the sizing run above: pages left in the page cache would be charged to
    # the root cgroup, not to this one, and escape the limit.
    drop_page_cache
    (echo $BASHPID > "$cg/cgroup.procs"; exec "$flashlm" bench -m "$model" --modes mmap \
      --mem-budget "$budget" -f "$text" -n "$n_gen" --json "$json") | tail -n +1
    rmdir "$cg" 2>/dev/null || true
  else
    drop_page_cache
    local extra=() base=${mode%%:*}
    case $mode in sparse*) extra=(--sparsity "$sparsity" --window "$window") ;; esac
    case $mode in *:*) extra+=(--sparse-reads "${mode#*:}") ;; esac
    "$flashlm" bench -m "$model" --modes "$base" --mem-budget "$budget" -f "$text" \
      -n "$n_gen" "${extra[@]}" --json "$json"
  fi
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
      f"| neurons loaded/token | cache hits | recall / precision | same tokens as dense | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
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
          f"| {loaded} | {hits} | {quality} | {same} | {r.get('rss_bytes', 0)/2**20:.0f} |")
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
    --title "$name: ms per token by mode, budget $budget (mmap: page faults count as compute)"
fi
