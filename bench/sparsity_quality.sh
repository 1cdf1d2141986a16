#!/usr/bin/env bash
# Quality cost of training-free activation sparsity, apart from any prediction error: held-out
# perplexity of the dense model with the calibrated per-layer thresholds applied (neurons with
# |act(gate.x) * (up.x)| at or below the layer's threshold are dropped).
# Usage: bench/sparsity_quality.sh MODEL.flm [CHUNKS=8] [CTX=512]
# Needs MODEL.flm.sparse from `flashlm calibrate` (on data/text/calibration.txt); evaluates on
# data/text/eval.txt (a different novel). Prints a markdown table; JSON to $JSON if set.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bench/sparsity_quality.sh MODEL.flm [CHUNKS] [CTX]}
chunks=${2:-8}
ctx=${3:-512}
flashlm=${FLASHLM:-build/flashlm}
levels=${LEVELS:-0 0.3 0.5 0.7 0.8 0.9}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "model: $model, eval: data/text/eval.txt, ctx $ctx, $chunks chunks"
rows=()
for s in $levels; do
  ppl=$("$flashlm" perplexity -m "$model" -f data/text/eval.txt -c "$ctx" --chunks "$chunks" \
    --sparsity "$s" 2>&1 | sed -n 's/.*[Pp]erplexity[^0-9]*\([0-9.]*\).*/\1/p' | tail -1)
  rows+=("$s $ppl")
  echo "  sparsity $s: ppl $ppl" >&2
done
python3 - "${rows[@]}" <<'PY'
import json, os, sys
rows = [r.split() for r in sys.argv[1:]]
base = float(rows[0][1])
print("| sparsity | perplexity | vs dense |")
print("|---|---|---|")
for s, p in rows:
    print(f"| {float(s):.0%} | {float(p):.3f} | {100 * (float(p) / base - 1):+.1f}% |")
if os.environ.get("JSON"):
    json.dump([{"sparsity": float(s), "perplexity": float(p)} for s, p in rows], open(os.environ["JSON"], "w"))
PY
