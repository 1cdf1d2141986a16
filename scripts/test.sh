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
