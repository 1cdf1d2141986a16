#!/usr/bin/env bash
# Configures and builds flashlm into build/ (Release). Extra arguments go to cmake, e.g.
#   scripts/build.sh -DFLASHLM_SANITIZE=ON      (use another BUILD_DIR for that: see below)
# BUILD_DIR (default build) picks the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" > /dev/null
cmake --build "$build_dir" -j "$(nproc)"
