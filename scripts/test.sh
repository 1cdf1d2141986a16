#!/usr/bin/env bash
# The test command: installs what is missing, builds, fetches the real models and the
# evaluation text, and runs the whole test suite with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
python3 -m pip install -q --disable-pip-version-check -r scripts/test_requirements.txt
python3 scripts/fetch_models.py --all
scripts/fetch_text.sh
ctest --test-dir build --output-on-failure -j 1 --timeout 900
# The same tests again under ASan + UBSan (build-asan/; scripts/sanitize.sh says what it skips).
scripts/sanitize.sh
# ARM64: cross-built and tested under qemu-aarch64 (scripts/arm64.sh says what it covers).
# FLASHLM_SKIP_ARM64=1 leaves it out (a machine without the Debian mirror's arm64 packages).
if [ -z "${FLASHLM_SKIP_ARM64:-}" ]; then
  scripts/arm64.sh
else
  echo "test: ARM64 left out (FLASHLM_SKIP_ARM64)"
fi
