#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/) with clang, ASan and UBSan into build-fuzz/ and runs each
# for FUZZ_SECONDS (default 60) seconds, starting from generated seeds (scripts/fuzz_seeds.py)
# and the corpus kept from earlier runs in build-fuzz/fuzz-corpus/.
#
#   scripts/fuzz.sh                        # all harnesses, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh flm_file gguf_file
#   FUZZ_SECONDS=1800 FUZZ_JOBS=2 scripts/fuzz.sh   # 30 min each, two at a time (one per core)
#
# Warnings are not errors here: clang warns about things gcc (the -Werror build) does not.
# A crash leaves its input in build-fuzz/fuzz-artifacts/<harness>/ and makes the script fail.
# Once fixed, copy that input to tests/data/fuzz_regressions/<harness>/ so that the test suite
# (fuzz_regression_test.cpp) replays it forever.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(gguf_file flm_file tokenizer_text server_request sparsity_file)

CC=clang CXX=clang++ BUILD_DIR="$build_dir" scripts/build.sh -DFLASHLM_FUZZ=ON -DFLASHLM_NATIVE=ON \
  -DFLASHLM_BUILD_TESTS=OFF -DFLASHLM_BUILD_BENCH=OFF -DFLASHLM_WERROR=OFF

seeds="$build_dir/fuzz-seeds"
python3 scripts/fuzz_seeds.py "$seeds"
mkdir -p "$seeds/flm_file"
for gguf in "$seeds"/gguf_file/*.gguf; do
  name=$(basename "$gguf" .gguf)
  "$build_dir/flashlm" convert --force -m "$gguf" -o "$seeds/flm_file/$name.flm" > /dev/null
done
# A real sparsity file (thresholds for three levels, a predictor for 0.5) of the 2-layer seed,
# calibrated on the seed texts: the sparsity_file harness reads files of that model's shape.
mkdir -p "$seeds/sparsity_file"
sparse_seed="$seeds/flm_file/spm_q8_0.flm"
cat "$seeds"/tokenizer_text/* README.md > "$seeds/calibration.txt"
"$build_dir/flashlm" calibrate -m "$sparse_seed" -f "$seeds/calibration.txt" --tokens 2000 \
  --levels 0.3,0.5,0.7 > /dev/null
"$build_dir/flashlm" train-predictor -m "$sparse_seed" -f "$seeds/calibration.txt" --tokens 2000 \
  --sparsity 0.5 --rank 8 --rank-last 8 > /dev/null
cp "$sparse_seed.sparse" "$seeds/sparsity_file/spm_q8_0.flm.sparse"
# The tokenizer harness fuzzes SmolLM2's real vocabulary when the model is here, else a seed's.
if [ -z "${FLASHLM_FUZZ_TOKENIZER:-}" ] && [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  export FLASHLM_FUZZ_TOKENIZER="$seeds/gguf_file/bpe_f32.gguf"
fi

# One harness: its own corpus, artifacts and log; prints executions, coverage and corpus size.
fuzz_one() {
  local h=$1 corpus="$build_dir/fuzz-corpus/$1" artifacts="$build_dir/fuzz-artifacts/$1"
  local log="$build_dir/fuzz-$1.log" start status=0
  mkdir -p "$corpus" "$artifacts"
  local dict=()
  [ -f "fuzz/$h.dict" ] && dict=(-dict="fuzz/$h.dict")
  start=$(date +%s)
  "$build_dir/fuzz_$h" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
      "$corpus" "$seeds/$h" "tests/data/fuzz_regressions/$h" > "$log" 2>&1 || status=1
  local runs cov
  runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
  cov=$(grep -oE "cov: [0-9]+ ft: [0-9]+" "$log" | tail -1 || true)
  echo "== $h: $runs executions in $(($(date +%s) - start)) s, ${cov:-cov: ?}," \
       "corpus $(ls "$corpus" | wc -l) inputs (log $log)"
  if [ $status -ne 0 ]; then
    grep -E "ERROR|SUMMARY|Test unit written" "$log" | head -5 || true
    return 1
  fi
}

# FUZZ_JOBS harnesses at a time (default 1); each one runs for FUZZ_SECONDS of wall time.
jobs=${FUZZ_JOBS:-1}
echo "fuzzing ${harnesses[*]}: ${seconds} s each, $jobs at a time"
failed=()
pids=()
names=()
for h in "${harnesses[@]}"; do
  fuzz_one "$h" &
  pids+=($!)
  names+=("$h")
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || failed+=("${names[0]}")
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("${names[$i]}")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs in $build_dir/fuzz-artifacts/)" >&2
  exit 1
fi
