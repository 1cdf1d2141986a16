#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/) with clang, ASan and UBSan into build-fuzz/ and runs each
# for FUZZ_SECONDS (default 60) seconds, starting from generated seeds (scripts/fuzz_seeds.py)
# and the corpus kept from earlier runs in build-fuzz/fuzz-corpus/.
#
#   scripts/fuzz.sh                        # all harnesses, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh flm_file gguf_file
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
[ ${#harnesses[@]} -gt 0 ] || harnesses=(gguf_file flm_file tokenizer_text server_request)

CC=clang CXX=clang++ BUILD_DIR="$build_dir" scripts/build.sh -DFLASHLM_FUZZ=ON -DFLASHLM_NATIVE=ON \
  -DFLASHLM_BUILD_TESTS=OFF -DFLASHLM_BUILD_BENCH=OFF -DFLASHLM_WERROR=OFF

seeds="$build_dir/fuzz-seeds"
python3 scripts/fuzz_seeds.py "$seeds"
mkdir -p "$seeds/flm_file"
for gguf in "$seeds"/gguf_file/*.gguf; do
  name=$(basename "$gguf" .gguf)
  "$build_dir/flashlm" convert --force -m "$gguf" -o "$seeds/flm_file/$name.flm" > /dev/null
done
# The tokenizer harness fuzzes SmolLM2's real vocabulary when the model is here, else a seed's.
if [ -z "${FLASHLM_FUZZ_TOKENIZER:-}" ] && [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  export FLASHLM_FUZZ_TOKENIZER="$seeds/gguf_file/bpe_f32.gguf"
fi

failed=()
for h in "${harnesses[@]}"; do
  corpus="$build_dir/fuzz-corpus/$h"
  artifacts="$build_dir/fuzz-artifacts/$h"
  mkdir -p "$corpus" "$artifacts"
  log="$build_dir/fuzz-$h.log"
  echo "== $h: ${seconds} s (log $log)"
  dict=()
  [ -f "fuzz/$h.dict" ] && dict=(-dict="fuzz/$h.dict")
  start=$(date +%s)
  if ! "$build_dir/fuzz_$h" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
      "$corpus" "$seeds/$h" "tests/data/fuzz_regressions/$h" > "$log" 2>&1; then
    failed+=("$h")
    grep -E "ERROR|SUMMARY|Test unit written" "$log" | head -5 || true
  fi
  runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
  echo "   $runs executions in $(($(date +%s) - start)) s; corpus $(ls "$corpus" | wc -l) inputs"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs in $build_dir/fuzz-artifacts/)" >&2
  exit 1
fi
