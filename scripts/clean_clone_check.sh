#!/usr/bin/env bash
# CI: the demo's first steps from a plain clone with no shared/ beside it (issue 19).
#
# Clones this checkout's HEAD into a fresh temporary folder, then -- with this checkout's .venv
# interpreter (no rebuild), PYTHONPATH pointing at the clone and LMGRAPH_DATA_DIR unset -- builds
# examples/demo.py's program and loads its train/val/test rows exactly as the demo does, from the
# data shipped in the package. No model is called. Prints the row counts; fails if the rows do
# not come from the clone's lmgraph/data or differ from the demo's published split.
#
# Usage: bash scripts/clean_clone_check.sh   (PYTHON=... to use another interpreter)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || { echo "[clean-clone] no interpreter at $PY: run bash scripts/setup.sh first" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
CLONE="$TMP/lmgraph"
git clone -q --no-hardlinks "$ROOT" "$CLONE"
echo "[clean-clone] cloned $(git -C "$CLONE" rev-parse --short HEAD) into $CLONE"

dir="$CLONE"
while [ "$dir" != "/" ]; do
  dir="$(dirname "$dir")"
  if [ -d "$dir/shared/data" ]; then
    echo "[clean-clone] $dir/shared/data exists above the clone: set TMPDIR to a folder without one" >&2
    exit 1
  fi
done

cd "$CLONE"
env -u LMGRAPH_DATA_DIR PYTHONPATH="$CLONE" LMGRAPH_CACHE=0 "$PY" - <<'EOF'
import importlib.util
import sys
from pathlib import Path

clone = Path.cwd().resolve()
import lmgraph
from lmgraph.evaluation import datasets as ds
from lmgraph.evaluation import load_trec, sample, split

assert Path(lmgraph.__file__).resolve().is_relative_to(clone), f"lmgraph imported from {lmgraph.__file__}, not the clone"

spec = importlib.util.spec_from_file_location("demo", clone / "examples" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)

# examples/demo.py's first steps with its own default arguments
args = demo.parser().parse_args([])
program = demo.build()
print(program.render(), "\n")
train, val = split(load_trec("train"), [args.train, args.val], seed=args.seed)
test = sample(load_trec("test"), args.test, seed=args.seed)
print(f"data: TREC coarse, train {len(train)} / val {len(val)} (train file), test {len(test)} (test file), "
      f"seed {args.seed}")

for name in ("train_5500.label", "TREC_10.en.label"):
    where = ds.dataset_file("trec", name).resolve()
    assert where.is_relative_to(clone / "lmgraph" / "data"), f"trec/{name} read from {where}, not the packaged copy"
    print(f"read from: {where.relative_to(clone)}")
fps = tuple(ds.fingerprint(rows) for rows in (train, val, test))
print(f"fingerprints: train {fps[0]} / val {fps[1]} / test {fps[2]}")
# the rows the demo draws with its defaults (the README's figure was measured on these)
assert fps == ("61d8cf36e2faa7bc", "623992ff63091a42", "cc179fcfe64c3fd4"), "the demo's seeded split changed"
assert (len(train), len(val), len(test)) == (args.train, args.val, args.test)
assert ds.fingerprint(sample(load_trec("test"), 100, seed=0)) == "86353a7e9c478473", "the TREC test file changed"
print("[clean-clone] ok: the demo's data loads from a clone with no shared/ beside it")
EOF
