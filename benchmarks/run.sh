#!/usr/bin/env bash
# The benchmark suite, one command: set up its environment (idempotent), then run it.
#   bash benchmarks/run.sh --quick     # < 15 min on 2 cores once set up
#   bash benchmarks/run.sh             # full mode (hours; rerun the same command to resume)
# Other flags go to benchmarks/suite.py (--tasks, --systems, --seed, --fresh, --servers, --threads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash benchmarks/setup.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec benchmarks/.work/venv/bin/python benchmarks/suite.py "$@"
