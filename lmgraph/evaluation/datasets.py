"""Loaders for the offline datasets in ``shared/data`` and seeded, fingerprinted splits.

Each loader returns a list of plain dicts: the input fields a pipeline reads plus the label
fields a metric reads. Files are read from ``LMGRAPH_DATA_DIR`` or the nearest ``shared/data``
folder above the working directory (or above this package).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DefinitionError

Row = dict[str, Any]

SST2_LABELS = ("negative", "positive")
TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
               "LOC": "location", "NUM": "number"}


def data_dir() -> Path:
    env = os.environ.get("LMGRAPH_DATA_DIR")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in (start, *start.parents):
            cand = parent / "shared" / "data"
            if cand.is_dir():
                return cand
    raise DefinitionError("cannot find the shared/data folder",
                          fix="set LMGRAPH_DATA_DIR to the folder that holds gsm8k/, sst2/, trec/ ...")


def _file(*parts: str) -> Path:
    p = data_dir().joinpath(*parts)
    if not p.exists():
        raise DefinitionError(f"dataset file {p} is missing", fix="check LMGRAPH_DATA_DIR / shared/data.")
    return p


def load_sst2(split: str = "test") -> list[Row]:
    """SST-2: ``sentence`` -> ``label`` ('negative'/'positive'). Splits: train (phrases), dev, test."""
    rows = []
    with _file("sst2", f"{split}.tsv").open(encoding="utf-8") as f:
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
    with _file("trec", name).open(encoding="latin-1") as f:
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
    with _file("banking77", f"{split}.csv").open(encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            rows.append({"id": f"banking77-{split}-{i}", "text": rec["text"], "label": rec["category"]})
    return rows


def banking77_labels() -> list[str]:
    return list(json.loads(_file("banking77", "categories.json").read_text()))


_GSM_FINAL = re.compile(r"####\s*(.+)$")


def load_gsm8k(split: str = "test") -> list[Row]:
    """GSM8K: ``question`` -> ``answer`` (the number after ``####``) and ``solution`` (full text)."""
    rows = []
    with _file("gsm8k", f"{split}.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            m = _GSM_FINAL.search(d["answer"].strip())
            rows.append({"id": f"gsm8k-{split}-{i}", "question": d["question"],
                         "answer": m.group(1).strip().replace(",", "") if m else "",
                         "solution": d["answer"]})
    return rows


def load_hotpotqa() -> list[Row]:
    """HotPotQA dev subsample: ``question`` -> ``answer`` (+ ``answers`` aliases, ``gold_titles``)."""
    with _file("hotpotqa", "dev500.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_hotpotqa_corpus() -> list[Row]:
    """The retrieval corpus for HotPotQA: dicts with ``id``, ``title``, ``text``."""
    with _file("hotpotqa", "corpus.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split(rows: Sequence[Row], sizes: Sequence[int], *, seed: int) -> list[list[Row]]:
    """Shuffle with ``seed`` and cut consecutive, disjoint parts of the given sizes."""
    if sum(sizes) > len(rows):
        raise DefinitionError(f"asked for {sum(sizes)} rows but the dataset has {len(rows)}",
                              fix="use smaller split sizes.")
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    out, pos = [], 0
    for n in sizes:
        out.append([rows[i] for i in idx[pos:pos + n]])
        pos += n
    return out


def sample(rows: Sequence[Row], n: int, *, seed: int) -> list[Row]:
    return split(rows, [min(n, len(rows))], seed=seed)[0]


def fingerprint(rows: Sequence[Row]) -> str:
    """A short content hash of a split (recorded in reports and artifacts)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
