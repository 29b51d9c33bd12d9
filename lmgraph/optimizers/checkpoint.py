"""The compile checkpoint: a JSON-lines file, a header line then one line per memo entry.

Each entry line carries ``sha256`` = sha256(previous hash + the entry's canonical JSON), the chain
starting from the header's, so an edited, reordered or transplanted line is refused. Lines are
flushed and fsynced before :meth:`Checkpoint.append` returns; a line cut off by a kill is dropped
on the next load, so appends start on a fresh line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._canonical import canonical_json
from ..errors import ArtifactError

CHECKPOINT_VERSION = 3  # 3: each entry line carries a hash chained to the header and the lines before it


def _hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj, default=str).encode()).hexdigest()


def _chain(previous: str, record: Mapping[str, Any]) -> str:
    body = canonical_json(record)
    return hashlib.sha256((previous + body).encode("utf-8")).hexdigest()


class Checkpoint:
    """One compile's checkpoint file at ``path``, for the compile with ``fingerprint``."""

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._open = False  # the file exists with this compile's header
        self._chain = ""  # the hash of the last line written or read

    def load(self) -> dict[str, dict[str, Any]]:
        """The memo entries recorded so far ({} when there is no file). ArtifactError when the file
        is not this lmgraph's format, belongs to another compile, or was edited."""
        path = self.path
        if not path.exists():
            return {}
        raw = path.read_bytes()
        header, sep, _ = raw.partition(b"\n")
        try:
            head = json.loads(header.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ArtifactError(f"checkpoint {path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})",
                                fix="delete it to start the compile afresh.") from None
        version = head.get("lmgraph_checkpoint") if isinstance(head, dict) else None
        if version != CHECKPOINT_VERSION:
            raise ArtifactError(f"checkpoint {path} has format version {version!r}; this lmgraph reads "
                                f"version {CHECKPOINT_VERSION}", fix="delete it to start the compile afresh.")
        if head.get("fingerprint") != self.fingerprint:
            raise ArtifactError(f"checkpoint {path} belongs to a compile with other arguments",
                                fix="use the same program, data, seed, budget and settings, "
                                    "or delete the checkpoint / pass another path.")
        if not sep:  # a header without its newline (not written by lmgraph): rewrite it on first append
            return {}
        memo: dict[str, dict[str, Any]] = {}
        chain = _chain("", head)
        end = raw.rfind(b"\n") + 1  # past the last complete line: a kill mid-append leaves a partial one
        for i, line in enumerate(raw[len(header) + len(sep):end].split(b"\n")[:-1], start=2):
            try:
                rec = json.loads(line.decode("utf-8"))
                key, entry, digest = rec["key"], rec["entry"], rec["sha256"]
                if not isinstance(key, str) or not isinstance(entry, dict):
                    raise TypeError("an entry line is {\"key\": str, \"entry\": object, \"sha256\": str}")
            except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as e:
                raise ArtifactError(f"checkpoint {path} is corrupted at line {i} ({type(e).__name__}: {str(e)[:200]})",
                                    fix="delete it to start the compile afresh.") from None
            chain = _chain(chain, {"key": key, "entry": entry})
            if digest != chain:
                raise ArtifactError(f"checkpoint {path} line {i} does not match its hash: the file was edited or "
                                    "corrupted, and its evaluations cannot be trusted",
                                    fix="delete it to start the compile afresh (with the call cache on, the "
                                        "evaluations are re-run from the cache).")
            memo[key] = entry
        if end < len(raw):
            os.truncate(path, end)  # drop the partial line, so that appends start on a fresh line
        self._chain = chain
        self._open = True
        return memo

    def append(self, key: str, entry: Mapping[str, Any]) -> None:
        """Append one memo entry, durably (flushed and fsynced) before returning."""
        if not self._open:  # the header goes in atomically: a checkpoint always has one
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            head = {"lmgraph_checkpoint": CHECKPOINT_VERSION, "fingerprint": self.fingerprint}
            tmp.write_text(json.dumps(head) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
            self._chain = _chain("", head)
            self._open = True
        line = {"key": key, "entry": entry}
        self._chain = _chain(self._chain, line)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**line, "sha256": self._chain}, ensure_ascii=False) + "\n")  # newline last
            f.flush()
            os.fsync(f.fileno())


__all__ = ["CHECKPOINT_VERSION", "Checkpoint"]
