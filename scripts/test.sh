#!/usr/bin/env bash
# Run the whole test suite (unit tests with fake models + integration tests with the embedded
# model and a llama.cpp server on 127.0.0.1). Sets up the environment first if needed.
# Extra arguments go to pytest (e.g. `-m "not integration"` for the fast unit tests only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
export LMGRAPH_CACHE_DIR="${LMGRAPH_CACHE_DIR:-$(mktemp -d)}"
exec .venv/bin/python -m pytest -q "$@"
