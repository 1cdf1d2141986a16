#!/usr/bin/env bash
# Does the engine keep its memory budget over a long generation? Runs each flash mode through
# `flashlm bench --cgroup on`: every mode in its own child process inside a cgroup v1 memory
# limit equal to the budget, page cache dropped before, generating many greedy tokens. Reports
# per mode whether it was killed, the plan's total against the cgroup's peak (page cache
# included), how often reclaim had to read evicted file pages back (refaults: thrashing), RSS
# after 8 tokens and at the end (flat), and ms/token. Then checks that an impossible budget is
# refused at start. Needs root (cgroup v1); tests/memory/ is the short version that CI runs.
#
#   bench/memory_limit.sh [MODEL.flm] [BUDGET] [TOKENS=2000]
#
# Defaults: models/smollm2.flm (converted if missing) at 150M (SmolLM2's fixed part is ~104
# MiB at -c 1024; 150M leaves a third of its FFN resident). For Qwen2.5-Coder-1.5B:
#   bench/memory_limit.sh models/qwen.flm 721M 256
# MODES (default "naive hybrid mmap sparse sparse:0.5 sparse:0.5:planned"): sparse:S runs at
# --sparsity S (needs `flashlm calibrate`), :planned uses planned reads (needs a predictor for
# S from `flashlm train-predictor`); entries whose files are missing are skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
flashlm=${FLASHLM:-build/flashlm}
model=${1:-models/smollm2.flm}
budget=${2:-150M}
tokens=${3:-2000}
modes=${MODES:-naive hybrid mmap sparse sparse:0.5 sparse:0.5:planned}
ctx=$((tokens + 128))
text=data/text/eval.txt
[ -f "$text" ] || scripts/fetch_text.sh
if [ ! -f "$model" ]; then
  "$flashlm" convert -m models/SmolLM2-135M-Instruct.Q4_1.gguf -o "$model" > /dev/null
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "model: $model, budget $budget, $tokens tokens, -c $ctx"
i=0
for entry in $modes; do
  IFS=: read -r mode sparsity reads <<< "$entry"
  extra=(--sparsity "${sparsity:-0}")
  [ -n "${reads:-}" ] && extra+=(--sparse-reads "$reads")
  i=$((i + 1))
  echo "== $entry"
  if ! "$flashlm" bench -m "$model" --modes "$mode" "${extra[@]}" --mem-budget "$budget" \
      -c "$ctx" -f "$text" -n "$tokens" -t "${THREADS:-2}" --cgroup on \
      --json "$out/$i.json" > "$out/$i.log" 2>&1; then
    echo "   skipped: $(grep -m1 -i 'error' "$out/$i.log" || tail -1 "$out/$i.log")"
    continue
  fi
done
python3 - "$out" <<'PY'
import json, pathlib, sys
rows = [json.loads(p.read_text())[0] for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"),
                                                      key=lambda p: int(p.stem))]
mib = lambda b: b / 2**20
print("\n| mode | killed | plan MiB | cgroup peak MiB | limit MiB | plan vs peak | limit hits | "
      "refaults | RSS after 8 / end MiB | ms/token |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    label = f"{r['mode']} ({r['sparse_reads']})" if r["sparse_reads"] else r["mode"]
    peak = r["cgroup_peak_bytes"]
    gap = (f"{100 * (r['plan_total_bytes'] - peak) / peak:+.1f}%"
           if r["mode"] != "mmap" and peak else "- (page cache fills the budget)")
    print(f"| {label} | {'KILLED' if r['killed'] else 'no'} | {mib(r['plan_total_bytes']):.1f} | "
          f"{mib(peak):.1f} | {mib(r['cgroup_limit_bytes']):.0f} | {gap} | "
          f"{r['cgroup_limit_hits']} | {r['cgroup_refaults']} | "
          f"{mib(r['rss_after_first8_bytes']):.1f} / {mib(r['rss_bytes']):.1f} | "
          f"{r['ms_total']:.1f} |")
PY

echo "== impossible budget (--mem-budget 1M)"
if "$flashlm" run -m "$model" --mode hybrid --mem-budget 1M -p x -n 1 > /dev/null 2> "$out/err"; then
  echo "   NOT refused"
  exit 1
fi
sed 's/^/   /' "$out/err"
