#!/usr/bin/env bash
# The benchmark environment: lmgraph's own setup plus DSPy 3.4.1 in a separate venv
# (DSPy is never a runtime dependency of lmgraph).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BV=benchmarks/.work/venv
if [ ! -x "$BV/bin/python" ]; then python3 -m venv "$BV"; fi
"$BV/bin/pip" install -q --disable-pip-version-check "dspy==3.4.1" 2>&1 | grep -v '^WARNING: Location' || true
"$BV/bin/pip" install -q --disable-pip-version-check -e . 2>&1 | grep -v '^WARNING: Location' || true
echo "benchmark venv ready: $BV"
