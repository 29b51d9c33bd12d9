"""Loading is a trust boundary: one reader for saved programs and compiled artifacts.

Every file is read the same way:

1. **limits** -- at most ``max_bytes`` (64 MiB by default) of UTF-8 JSON, nested at most
   ``max_depth`` (200) levels; anything else is refused before it is parsed (or while, for depth);
2. **the envelope** -- ``{"lmgraph_artifact": <version>, "program": {...}, "content_hash":
   <sha256 of the rest>, ...}``, what :meth:`Program.save` and
   :func:`~lmgraph.optimizers.save_artifact` write. The version must be one this lmgraph reads
   and the hash must match. A file without a hash (a bare program, a hand-made wrapper) is
   refused unless the caller says it trusts it (``trusted=True``);
3. **the signature**, when the caller asks for one (``verify_key=``): an HMAC-SHA256 of the same
   canonical JSON under a key only the signer holds (``sign_key=`` when saving), so the file is
   known to come from whoever holds the key, not only to be intact.

Every failure is an :class:`~lmgraph.errors.ArtifactError` that names the file and the fix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._canonical import canonical_json  # the one JSON text a value hashes as (re-exported here)
from ..errors import ArtifactError, ConfigError

__all__ = ["ARTIFACT_VERSION", "MAX_DEPTH", "MAX_FILE_BYTES", "canonical_json", "check_depth",
           "content_hash", "envelope", "newer_version_error", "open_envelope", "read_document", "read_json_file",
           "signature"]

ARTIFACT_VERSION = 1  # the envelope: a program (and, for compiled artifacts, the report) with a content hash
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 200
SIGNATURE_PREFIX = "hmac-sha256:"
_UNHASHED = ("content_hash", "signature")  # the fields the hash (and the signature) leave out


def _body(data: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in data.items() if k not in _UNHASHED}).encode()


def content_hash(data: Mapping[str, Any]) -> str:
    """sha256 over an artifact's canonical JSON, its own ``content_hash`` (and ``signature``) left out."""
    return hashlib.sha256(_body(data)).hexdigest()


def newer_version_error(what: str, version: Any, reads: int, path: Any = None) -> ArtifactError | None:
    """The error for a file whose ``what`` format version is newer than the ``reads`` this lmgraph
    reads (None when ``version`` is not a newer one): both versions named, and the fix."""
    if isinstance(version, bool) or not isinstance(version, int) or version <= reads:
        return None
    where = f"{path} is" if path is not None else "this is"
    return ArtifactError(f"{where} not an lmgraph {what} this version reads: it was written by a newer lmgraph "
                         f"({what} format version {version}; this lmgraph reads version {reads})",
                         fix="upgrade lmgraph (pip install -U lmgraph) to load it, or save it again from code with "
                             "this version.")


def _key_bytes(key: Any, what: str) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ConfigError(f"{what} must be a non-empty str or bytes, got {type(key).__name__}",
                          fix=f"pass {what}=b'...' (keep it secret: whoever holds it can sign artifacts).")
    return bytes(key)


def signature(data: Mapping[str, Any], key: str | bytes) -> str:
    """``hmac-sha256:<hex>`` over the artifact's canonical JSON (hash and signature left out)."""
    return SIGNATURE_PREFIX + hmac.new(_key_bytes(key, "sign_key"), _body(data), hashlib.sha256).hexdigest()


def envelope(body: Mapping[str, Any], *, sign_key: str | bytes | None = None) -> dict[str, Any]:
    """``body`` (``{"program": ..., "report": ...}``) as a saved file: the format version first,
    the content hash, and the signature when ``sign_key`` is given. Key order is kept."""
    out: dict[str, Any] = {"lmgraph_artifact": ARTIFACT_VERSION, **{k: v for k, v in body.items()
                                                                   if k not in _UNHASHED}}
    out["content_hash"] = content_hash(out)
    if sign_key is not None:
        out["signature"] = signature(out, sign_key)
    return out


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> int:
    """The nesting depth of a JSON value (iteratively: no recursion limit); raises ValueError past
    ``max_depth``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items: Any = v.values()
        elif isinstance(v, list):
            items = v
        else:
            continue
        deepest = max(deepest, d)
        if d > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        stack.extend((x, d + 1) for x in items)
    return deepest


def read_json_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    """A JSON file's value, within the size and depth limits; every failure an ArtifactError."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise ArtifactError(f"{path} is {size:,} bytes, over the {max_bytes:,}-byte limit for loading",
                                fix="check that it is the file you meant; a program or artifact you trust that "
                                    "is really this large loads with max_bytes= set higher.")
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)  # the file may have grown since stat()
    except FileNotFoundError:
        raise ArtifactError(f"no artifact at {path}", fix="check the path.") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path} is a directory, not an artifact file", fix="pass the path of the .json file.") \
            from None
    except OSError as e:
        raise ArtifactError(f"cannot read {path} ({type(e).__name__}: {e.strerror or e})",
                            fix="check the path and its permissions.") from None
    if len(raw) > max_bytes:
        raise ArtifactError(f"{path} is over the {max_bytes:,}-byte limit for loading",
                            fix="load it with max_bytes= set higher if you trust it.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path} is not UTF-8 text (byte {e.start}): not an lmgraph file, or corrupted",
                            fix="restore the file, or save it again from code.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e})", fix="restore the file, or save it again from code.") \
            from None
    except RecursionError:
        raise ArtifactError(f"{path} is nested too deeply to load (over {max_depth} levels)",
                            fix="this is not a file lmgraph wrote; do not load it.") from None
    try:
        check_depth(data, max_depth)
    except ValueError:
        raise ArtifactError(f"{path} is nested too deeply to load (over {max_depth} levels)",
                            fix="this is not a file lmgraph wrote; do not load it (or raise max_depth= if you "
                                "trust it).") from None
    return data


_TRUST_FIX = ("if you wrote it or trust it, load it with trusted=True (Program.load(path, trusted=True)) and save "
              "it again with Program.save() / save_artifact(), which add the envelope; otherwise do not load it.")


def open_envelope(data: Any, path: str | os.PathLike[str], *, trusted: bool = False,
                  verify_key: str | bytes | None = None) -> dict[str, Any]:
    """Check a loaded file's envelope: the format version, the content hash, and (with
    ``verify_key``) the signature. Returns the document as ``{"program": ..., ...}``; a file
    without a hash (a bare program, a wrapper) only with ``trusted=True``."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is not an lmgraph artifact (a JSON {type(data).__name__}, not an object)",
                            fix="pass the path of a file written by Program.save() or save_artifact().")
    key = _key_bytes(verify_key, "verify_key") if verify_key is not None else None
    has_envelope = "lmgraph_artifact" in data
    if has_envelope:
        version = data.get("lmgraph_artifact")
        newer = newer_version_error("artifact", version, ARTIFACT_VERSION, path)
        if newer is not None:
            raise newer
        if version != ARTIFACT_VERSION or isinstance(version, bool):
            raise ArtifactError(f"{path} is not an lmgraph artifact this version reads (format version {version!r}; "
                                f"this lmgraph reads version {ARTIFACT_VERSION})",
                                fix="load it with the lmgraph version that wrote it, or save it again from code.")
    if has_envelope and "content_hash" in data:
        if not isinstance(data["content_hash"], str) or not hmac.compare_digest(
                content_hash(data).encode(), data["content_hash"].encode("utf-8", "replace")):
            raise ArtifactError(f"{path} does not match its content hash (edited or corrupted)",
                                fix="re-save it with save_artifact()/Program.save() or restore the original file; "
                                    "to load a copy you edited on purpose, delete its \"content_hash\" and load it "
                                    "with trusted=True.")
    elif not trusted:
        what = "it has no content hash" if has_envelope else \
            "it has no envelope (format version and content hash)"
        raise ArtifactError(f"{path} is not an lmgraph artifact: {what}, so whether it was altered cannot be "
                            "checked", fix=_TRUST_FIX)
    if key is not None:
        sig = data.get("signature")
        if not isinstance(sig, str) or not sig:
            raise ArtifactError(f"{path} is not signed, and a signature was asked for (verify_key=)",
                                fix="save it with sign_key= (the same key), or load it without verify_key= if "
                                    "you trust where it came from.")
        if not sig.startswith(SIGNATURE_PREFIX) or not hmac.compare_digest(
                signature(data, key).encode(), sig.encode("utf-8", "replace")):
            raise ArtifactError(f"{path} has a signature that does not match verify_key: it was signed with "
                                "another key, or changed after signing",
                                fix="use the key it was signed with; if it should match, do not trust this file.")
    if has_envelope or "lmgraph_program" not in data:
        if "program" not in data:
            raise ArtifactError(f"{path} is not an lmgraph artifact (no \"program\" in it)",
                                fix="pass the path of a file written by Program.save() or save_artifact().")
        return data
    return {"program": data}  # a bare program, trusted


def read_document(path: str | os.PathLike[str], *, trusted: bool = False, verify_key: str | bytes | None = None,
                  max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The one loader: read ``path`` within the limits and open its envelope (see
    :func:`open_envelope`). Returns ``{"program": ..., "report": ... (artifacts), ...}``."""
    return open_envelope(read_json_file(path, max_bytes=max_bytes, max_depth=max_depth), path,
                         trusted=trusted, verify_key=verify_key)
