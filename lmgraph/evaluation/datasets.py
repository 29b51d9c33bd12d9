"""Loaders for the offline datasets (``shared/data``, or shipped in ``lmgraph/data``) and seeded, fingerprinted splits.

Each loader returns a list of plain dicts: the input fields a pipeline reads plus the label
fields a metric reads. Files are read from ``LMGRAPH_DATA_DIR`` when set, else from the nearest
``shared/data`` folder above the working directory (or above this package); TREC and SST-2
test/dev then fall back to the verbatim copies shipped in the package (``lmgraph/data``, see its
README for provenance and licences), so the demos run from a plain clone.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._canonical import canonical_json
from ..errors import DefinitionError

Row = dict[str, Any]
_R = TypeVar("_R", bound=Mapping[str, Any])  # a row type split/sample hand back unchanged

SST2_LABELS = ("negative", "positive")
TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
               "LOC": "location", "NUM": "number"}


#: the dataset files shipped inside the package (``lmgraph/data``), as (folder, file) pairs
PACKAGED_FILES = (("trec", "train_5500.label"), ("trec", "TREC_10.en.label"),
                  ("sst2", "test.tsv"), ("sst2", "dev.tsv"))


def packaged_data_dir() -> Path:
    """The folder of the small datasets shipped with the package (TREC, SST-2 test/dev)."""
    return Path(__file__).resolve().parent.parent / "data"


def _search_starts() -> tuple[Path, ...]:
    """Where the ``shared/data`` lookup starts: the working directory, then this package."""
    return (Path.cwd(), Path(__file__).resolve().parent)


def _shared_data_dir() -> Path | None:
    """``LMGRAPH_DATA_DIR`` when set, else the nearest ``shared/data`` above the working
    directory or above this package; None when there is neither."""
    env = os.environ.get("LMGRAPH_DATA_DIR")
    if env:
        return Path(env)
    for start in _search_starts():
        for parent in (start, *start.parents):
            cand = parent / "shared" / "data"
            if cand.is_dir():
                return cand
    return None


def _not_found_where() -> str:
    return ("no shared/data folder above " + " or ".join(str(s) for s in _search_starts())
            + " and LMGRAPH_DATA_DIR is not set")


def data_dir() -> Path:
    """The folder with the full offline datasets (``LMGRAPH_DATA_DIR`` or the nearest
    ``shared/data``); raises :class:`DefinitionError` when there is none. The datasets shipped
    in the package (:data:`PACKAGED_FILES`) load without it."""
    found = _shared_data_dir()
    if found is None:
        raise DefinitionError(f"cannot find the shared/data folder: {_not_found_where()}",
                              fix="set LMGRAPH_DATA_DIR to the folder that holds gsm8k/, sst2/, trec/ ... "
                                  "(TREC and SST-2 test/dev load without it, from the copy in lmgraph/data).")
    return found


def dataset_file(*parts: str) -> Path:
    """The file a loader reads: from ``LMGRAPH_DATA_DIR`` when set, else from the nearest
    ``shared/data``; failing that, the verbatim copy shipped in the package (TREC, SST-2
    test/dev). A file found nowhere raises a :class:`DefinitionError` that names the
    dataset, every place searched and the fix."""
    rel = "/".join(parts)
    searched = []
    shared = _shared_data_dir()
    if shared is not None:
        p = shared.joinpath(*parts)
        if p.is_file():
            return p
        searched.append(str(p))
    else:
        searched.append(_not_found_where())
    if tuple(parts) in PACKAGED_FILES:
        p = packaged_data_dir().joinpath(*parts)
        if p.is_file():
            return p
        searched.append(f"{p} (the packaged copy is missing: reinstall lmgraph)")
    else:
        searched.append(f"not among the files shipped in {packaged_data_dir()} "
                        f"({', '.join('/'.join(f) for f in PACKAGED_FILES)})")
    raise DefinitionError(f"dataset {parts[0]!r}: cannot find {rel}; searched: {'; '.join(searched)}",
                          fix=f"set LMGRAPH_DATA_DIR to a folder holding {rel} (the layout of "
                              f"shared/data, see shared/data/README.md for the sources).")


def load_sst2(split: str = "test") -> list[Row]:
    """SST-2: ``sentence`` -> ``label`` ('negative'/'positive'). Splits: train (phrases), dev, test."""
    rows = []
    with dataset_file("sst2", f"{split}.tsv").open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for i, rec in enumerate(reader):
            if len(rec) >= 2 and rec[1].strip() in ("0", "1"):
                rows.append({"id": f"sst2-{split}-{i}", "sentence": rec[0].strip(),
                             "label": SST2_LABELS[int(rec[1])]})
    return rows


def load_trec(split: str = "train") -> list[Row]:
    """TREC question classification: ``question`` -> ``label`` (coarse, 6 words) and ``fine``."""
    name = "train_5500.label" if split == "train" else "TREC_10.en.label"
    rows = []
    with dataset_file("trec", name).open(encoding="latin-1") as f:
        for i, line in enumerate(f):
            head, _, question = line.strip().partition(" ")
            coarse, _, fine = head.partition(":")
            if coarse in TREC_COARSE:
                rows.append({"id": f"trec-{split}-{i}", "question": question.strip(),
                             "label": TREC_COARSE[coarse], "fine": fine})
    return rows


def load_banking77(split: str = "train") -> list[Row]:
    """Banking77: ``text`` -> ``label`` (77 intents, underscores as in the source)."""
    rows = []
    with dataset_file("banking77", f"{split}.csv").open(encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            rows.append({"id": f"banking77-{split}-{i}", "text": rec["text"], "label": rec["category"]})
    return rows


def banking77_labels() -> list[str]:
    return list(json.loads(dataset_file("banking77", "categories.json").read_text()))


_GSM_FINAL = re.compile(r"####\s*(.+)$")


def load_gsm8k(split: str = "test") -> list[Row]:
    """GSM8K: ``question`` -> ``answer`` (the number after ``####``) and ``solution`` (full text)."""
    rows = []
    with dataset_file("gsm8k", f"{split}.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            m = _GSM_FINAL.search(d["answer"].strip())
            rows.append({"id": f"gsm8k-{split}-{i}", "question": d["question"],
                         "answer": m.group(1).strip().replace(",", "") if m else "",
                         "solution": d["answer"]})
    return rows


def load_hotpotqa() -> list[Row]:
    """HotPotQA dev subsample: ``question`` -> ``answer`` (+ ``answers`` aliases, ``gold_titles``)."""
    with dataset_file("hotpotqa", "dev500.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_hotpotqa_corpus() -> list[Row]:
    """The retrieval corpus for HotPotQA: dicts with ``id``, ``title``, ``text``."""
    with dataset_file("hotpotqa", "corpus.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split(rows: Sequence[_R], sizes: Sequence[int], *, seed: int) -> list[list[_R]]:
    """Shuffle with ``seed`` and cut consecutive, disjoint parts of the given sizes."""
    if sum(sizes) > len(rows):
        raise DefinitionError(f"asked for {sum(sizes)} rows but the dataset has {len(rows)}",
                              fix="use smaller split sizes.")
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    out: list[list[_R]] = []
    pos = 0
    for n in sizes:
        out.append([rows[i] for i in idx[pos:pos + n]])
        pos += n
    return out


def sample(rows: Sequence[_R], n: int, *, seed: int) -> list[_R]:
    return split(rows, [min(n, len(rows))], seed=seed)[0]


def fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    """A short content hash of a split (recorded in reports and artifacts)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(canonical_json(r, default=str, compact=False).encode())  # bytes as recorded before
        h.update(b"\n")
    return h.hexdigest()[:16]
