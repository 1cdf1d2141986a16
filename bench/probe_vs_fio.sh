#!/usr/bin/env bash
# How close flashlm's I/O engine comes to the device's limit: fio and `flashlm probe` measure
# O_DIRECT random reads on the same file, same request size and queue depth (fio: io_uring
# with registered buffers and file, as the probe reads, randread, time-based), one point at a time, and the table shows median MiB/s and the median
# of probe/fio over the repeats. The target is a ratio within 10% of 1 at every point.
# Usage:
#   bench/probe_vs_fio.sh [FILE=build/probe.bin] [SIZE=1G] [SECONDS=2]
# Environment: REPEATS (default 3), SIZES (4K,16K,64K,256K,1M), DEPTHS (1,4,16,32),
#   IO (probe backend: auto, uring, pread), FLASHLM (build/flashlm), JSON (write results there),
#   MORE (default 8): a point whose median ratio is outside 10% after REPEATS pairs is measured
#   again until it has MORE pairs (0: never), since single runs of either tool spread by +-15%
#   on a virtual disk; the table shows how many pairs each point has.
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-build/probe.bin}
size=${2:-1G}
seconds=${3:-2}
repeats=${REPEATS:-3}
sizes=${SIZES:-4K,16K,64K,256K,1M}
depths=${DEPTHS:-1,4,16,32}
io=${IO:-auto}
flashlm=${FLASHLM:-build/flashlm}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 1; }
[ -x "$flashlm" ] || { echo "no $flashlm: build it first, or set FLASHLM" >&2; exit 1; }
mkdir -p "$(dirname "$file")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo "file: $file ($size), $seconds s per point, $repeats repeat(s), probe backend $io"
# Creates the file once (random data, O_DIRECT) so that both tools read the same bytes.
"$flashlm" probe "$file" --size "$size" --sizes 4K --depths 1 --seconds-per-point 0.05 \
  --io "$io" >/dev/null 2>"$work/probe.log" || { cat "$work/probe.log" >&2; exit 1; }

run_fio() {
  fio --name=probe --filename="$file" --size="$size" --rw=randread --bs="$1" --iodepth="$2" \
    --ioengine=io_uring --fixedbufs --registerfiles --direct=1 --time_based \
    --runtime="$seconds" --output-format=json \
    >"$work/fio.json"
  jq '.jobs[0].read.bw_bytes / 1048576' "$work/fio.json"
}
run_probe() {
  "$flashlm" probe "$file" --size "$size" --sizes "$1" --depths "$2" \
    --seconds-per-point "$seconds" --io "$io" -o "$work/probe.json" >/dev/null \
    2>"$work/probe.log" || { cat "$work/probe.log" >&2; exit 1; }
  jq '.measured[0].mib_per_s' "$work/probe.json"
}

# The device drifts by tens of percent within minutes, so each repeat is a pair measured back
# to back, in alternating order, and the table shows the median of the pairs' ratios.
results=$work/results.tsv
# Pairs number `from` to `to`-1 of one point.
measure_point() {
  local bs=$1 qd=$2 from=$3 to=$4 r fio_mib probe_mib
  for ((r = from; r < to; r++)); do
    if ((r % 2 == 0)); then
      fio_mib=$(run_fio "$bs" "$qd")
      probe_mib=$(run_probe "$bs" "$qd")
    else
      probe_mib=$(run_probe "$bs" "$qd")
      fio_mib=$(run_fio "$bs" "$qd")
    fi
    printf '%s\t%s\t%s\t%s\n' "$bs" "$qd" "$fio_mib" "$probe_mib" >>"$results"
  done
  echo "  measured $bs QD $qd ($to pairs)" >&2
}
for bs in ${sizes//,/ }; do
  for qd in ${depths//,/ }; do
    measure_point "$bs" "$qd" 0 "$repeats"
  done
done

# report RESULTS [JSON]: the table; `report RESULTS --outside` lists the points outside 10%.
report() {
  python3 - "$@" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    bs, qd, fio, probe = line.split("\t")
    rows.setdefault((bs, int(qd)), []).append((float(fio), float(probe)))
def ratio(runs):
    return statistics.median(r[1] / r[0] for r in runs)
if sys.argv[2:] == ["--outside"]:
    for (bs, qd), runs in rows.items():
        if abs(ratio(runs) - 1) > 0.10:
            print(bs, qd)
    sys.exit()
out = []
print(f"{'size':>6} {'QD':>4} {'pairs':>5} {'fio MiB/s':>10} {'probe MiB/s':>12} {'probe/fio':>10}")
for (bs, qd), runs in rows.items():
    fio = statistics.median(r[0] for r in runs)
    probe = statistics.median(r[1] for r in runs)
    flag = "" if abs(ratio(runs) - 1) <= 0.10 else "  <- outside 10%"
    print(f"{bs:>6} {qd:>4} {len(runs):>5} {fio:>10.1f} {probe:>12.1f} {ratio(runs):>10.3f}{flag}")
    out.append({"request": bs, "queue_depth": qd, "fio_mib_per_s": fio,
                "probe_mib_per_s": probe, "ratio": ratio(runs), "runs": runs})
if len(sys.argv) > 2 and sys.argv[2]:
    json.dump(out, open(sys.argv[2], "w"), indent=2)
    print(f"wrote {sys.argv[2]}")
PY
}
more=${MORE:-8}
if ((more > repeats)); then
  report "$results" --outside | while read -r bs qd; do
    measure_point "$bs" "$qd" "$repeats" "$more" </dev/null
  done
fi
report "$results" "${JSON:-}"
