"""Importing lmgraph and its backend modules must not import heavy optional dependencies."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = (
    "import lmgraph, lmgraph.lm.llamacpp, lmgraph.lm.litellm, lmgraph.lm.server, "
    "lmgraph.lm.embedded, sys; "
    "bad = [m for m in ('llama_cpp', 'litellm', 'openai', 'uvicorn') if m in sys.modules]; "
    "assert not bad, bad"
)


def test_backends_import_lazily():
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
