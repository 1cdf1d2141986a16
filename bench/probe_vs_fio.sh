#!/usr/bin/env bash
# How close flashlm's I/O engine comes to the device's limit: fio and `flashlm probe` measure
# O_DIRECT random reads on the same file, same request size and queue depth (fio: io_uring
# with registered buffers and file, as the probe reads, randread, time-based), one point at a time, and the table shows median MiB/s and the median
# of probe/fio over the repeats. The target is a ratio within 10% of 1 at every point.
# Usage:
#   bench/probe_vs_fio.sh [FILE=build/probe.bin] [SIZE=1G] [SECONDS=2]
# Environment: REPEATS (default 3), SIZES (4K,16K,64K,256K,1M), DEPTHS (1,4,16,32),
#   IO (probe backend: auto, uring, pread), FLASHLM (build/flashlm), JSON (write results there).
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
for bs in ${sizes//,/ }; do
  for qd in ${depths//,/ }; do
    for ((r = 0; r < repeats; r++)); do
      if ((r % 2 == 0)); then
        fio_mib=$(run_fio "$bs" "$qd")
        probe_mib=$(run_probe "$bs" "$qd")
      else
        probe_mib=$(run_probe "$bs" "$qd")
        fio_mib=$(run_fio "$bs" "$qd")
      fi
      printf '%s\t%s\t%s\t%s\n' "$bs" "$qd" "$fio_mib" "$probe_mib" >>"$results"
    done
    echo "  measured $bs QD $qd" >&2
  done
done

python3 - "$results" "${JSON:-}" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    bs, qd, fio, probe = line.split("\t")
    rows.setdefault((bs, int(qd)), []).append((float(fio), float(probe)))
out = []
print(f"{'size':>6} {'QD':>4} {'fio MiB/s':>10} {'probe MiB/s':>12} {'probe/fio':>10}")
for (bs, qd), runs in rows.items():
    fio = statistics.median(r[0] for r in runs)
    probe = statistics.median(r[1] for r in runs)
    ratio = statistics.median(r[1] / r[0] for r in runs)
    flag = "" if abs(ratio - 1) <= 0.10 else "  <- outside 10%"
    print(f"{bs:>6} {qd:>4} {fio:>10.1f} {probe:>12.1f} {ratio:>10.3f}{flag}")
    out.append({"request": bs, "queue_depth": qd, "fio_mib_per_s": fio,
                "probe_mib_per_s": probe, "ratio": ratio, "runs": runs})
if sys.argv[2]:
    json.dump(out, open(sys.argv[2], "w"), indent=2)
    print(f"wrote {sys.argv[2]}")
PY
