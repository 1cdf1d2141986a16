#!/usr/bin/env bash
# Does the engine keep its memory budget over a long generation? Runs `flashlm run` on a .flm
# model with --mem-budget inside a cgroup v1 memory limit, generating many tokens, samples the
# process's RSS every second, and reports peak RSS against the budget and the RSS growth from
# the first 10% of the run to the end. Then checks that an impossible budget is refused at
# start. Needs root for the cgroup (without it, runs unconfined and says so).
#
#   bench/memory_limit.sh [MODEL.flm] [BUDGET=50%] [TOKENS=2000]
#
# MODES (default "hybrid sparse-oracle") picks the modes (sparse-oracle needs MODEL.flm.sparse
# from `flashlm calibrate`; SPARSITY, default 0.5, picks its level), THREADS (default 2) the
# threads; OVERHEAD_MIB (default: the KV cache
# plus 64 MiB) is what the cgroup allows beyond the weight budget: the budget covers weights
# only, while the process also holds its KV cache, activations, code and allocator slack.
set -euo pipefail
cd "$(dirname "$0")/.."
flashlm=${FLASHLM:-build/flashlm}
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.flm}
budget=${2:-50%}
tokens=${3:-2000}
modes=${MODES:-hybrid sparse-oracle}
ctx=$((tokens + 64))
if [ ! -f "$model" ]; then
  "$flashlm" convert -m models/SmolLM2-135M-Instruct.Q4_1.gguf -o "$model" > /dev/null
fi
prompt="$(head -c 400 data/text/eval.txt 2>/dev/null || echo 'Once upon a time')"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "model: $model ($(du -m "$model" | cut -f1) MiB), budget $budget, $tokens tokens, -c $ctx"

# MiB numbers the engine prints for this budget (plan line: "weights in DRAM: X MiB of the Y MiB
# budget") and the KV cache it will allocate.
mode_flags() {
  case $1 in sparse*) echo "--sparsity ${SPARSITY:-0.5}" ;; esac
}
budget_mib() {
  # shellcheck disable=SC2046
  "$flashlm" run -m "$model" --mode "$1" $(mode_flags "$1") --mem-budget "$budget" -c "$ctx" -p x -n 1 2>&1 |
    sed -n 's/.*of the \([0-9.]*\) MiB budget.*/\1/p' | head -1
}
read -r n_layers kv_dim < <(python3 - "$model" <<'PY'
import struct, sys
# Just enough of the GGUF header to find block_count and the kv width.
d = open(sys.argv[1], "rb").read(1 << 22)
def find_u32(key):
    k = key.encode()
    i = d.find(struct.pack("<Q", len(k)) + k)
    return struct.unpack_from("<I", d, i + 8 + len(k) + 4)[0]
arch = "llama"
layers = find_u32(f"{arch}.block_count")
heads = find_u32(f"{arch}.attention.head_count")
kv = find_u32(f"{arch}.attention.head_count_kv")
d_model = find_u32(f"{arch}.embedding_length")
print(layers, kv * d_model // heads)
PY
)
kv_mib=$(( 2 * n_layers * ctx * kv_dim * 4 / 1048576 ))

for mode in $modes; do
  echo "== $mode"
  b=$(budget_mib "$mode" || true)
  if [ -z "$b" ]; then
    echo "   $mode: cannot run (see: $flashlm run -m $model --mode $mode --mem-budget $budget)"
    continue
  fi
  overhead=${OVERHEAD_MIB:-$((kv_mib + 64))}
  limit_mib=$(python3 -c "import math; print(math.ceil($b + $overhead))")
  cg=/sys/fs/cgroup/memory/flashlm-memlimit-$$
  confined=no
  if mkdir "$cg" 2>/dev/null; then
    echo $((limit_mib * 1048576)) > "$cg/memory.limit_in_bytes"
    echo 0 > "$cg/memory.swappiness" 2>/dev/null || true
    confined=yes
  fi
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  log=$(mktemp)
  (
    [ $confined = yes ] && echo $BASHPID > "$cg/cgroup.procs"
    # shellcheck disable=SC2046
    exec "$flashlm" run -m "$model" --mode "$mode" $(mode_flags "$mode") --mem-budget "$budget" \
      -c "$ctx" -t "${THREADS:-2}" \
      -p "$prompt" -n "$tokens" --temp 0.8 -s 1 > /dev/null 2> "$log"
  ) &
  pid=$!
  samples=()
  while kill -0 $pid 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null || true)
    [ -n "$rss" ] && samples+=("$rss")
    sleep 1
  done
  status=0
  wait $pid || status=$?
  failcnt=-
  oom=-
  if [ $confined = yes ]; then
    failcnt=$(cat "$cg/memory.failcnt")
    oom=$(awk '/oom_kill /{print $2}' "$cg/memory.oom_control" 2>/dev/null || echo "?")
    rmdir "$cg" 2>/dev/null || true
  fi
  echo "   budget ${b} MiB of weights; KV cache ${kv_mib} MiB; cgroup limit ${limit_mib} MiB (confined: $confined)"
  grep -E "weights in DRAM|decode:" "$log" | sed 's/^/   /'
  [ $status -eq 0 ] || { echo "   exit status $status"; tail -3 "$log" | sed 's/^/   /'; }
  printf '%s\n' "${samples[@]}" | python3 -c "
import sys
kib = [int(x) for x in sys.stdin if x.strip()]
if not kib:
    print('   no RSS samples'); sys.exit()
n = len(kib); early = max(kib[:max(1, n // 10)])
print(f'   RSS: {n} samples, peak {max(kib)/1024:.1f} MiB (budget $b MiB weights + ${kv_mib} MiB KV cache), '
      f'growth from the first 10% of the run to the end {(kib[-1]-early)/1024:+.1f} MiB')
print(f'   cgroup: failcnt $failcnt, oom kills $oom')
"
  rm -f "$log"
done

echo "== impossible budget (--mem-budget 1M)"
if "$flashlm" run -m "$model" --mode hybrid --mem-budget 1M -p x -n 1 > /dev/null 2> /tmp/memlimit-$$.err; then
  echo "   NOT refused"
  exit 1
fi
sed 's/^/   /' /tmp/memlimit-$$.err
rm -f /tmp/memlimit-$$.err
