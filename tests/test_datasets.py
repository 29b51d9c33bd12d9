"""Dataset lookup: LMGRAPH_DATA_DIR, then the nearest shared/data, then the copies shipped in the
package (TREC, SST-2 test/dev), so the demos run from a plain clone with no shared/ beside it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

import lmgraph as lg
from lmgraph.evaluation import datasets as ds


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """A session with no shared/data anywhere: cwd in an empty folder, no LMGRAPH_DATA_DIR, and
    the lookup above the package (which in this checkout would find ../shared/data) cut off."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("LMGRAPH_DATA_DIR", raising=False)
    monkeypatch.setattr(ds, "_search_starts", lambda: (work,))
    if ds._shared_data_dir() is not None:
        pytest.skip(f"a shared/data folder exists above {work}: cannot test the lookup without one here")
    return work


def test_trec_and_sst2_load_from_the_packaged_copy_without_shared_data(no_shared):
    with pytest.raises(lg.DefinitionError, match="shared/data"):
        ds.data_dir()
    pkg = ds.packaged_data_dir()
    assert ds.dataset_file("trec", "train_5500.label") == pkg / "trec" / "train_5500.label"
    train, test = ds.load_trec("train"), ds.load_trec("test")
    assert (len(train), len(test)) == (5444, 499)
    assert len({r["label"] for r in train}) == 6
    sst_test, sst_dev = ds.load_sst2("test"), ds.load_sst2("dev")
    assert (len(sst_test), len(sst_dev)) == (872, 6735)
    assert {r["label"] for r in sst_test} == {"negative", "positive"}
    # the demos' seeded rows are the ones they drew from shared/data (examples/demo.py and
    # demo_sst2.py, seed 0; fingerprints taken with the loader before the packaged copy existed)
    tr, va = ds.split(train, [60, 40], seed=0)
    te = ds.sample(test, 100, seed=0)
    assert (ds.fingerprint(tr), ds.fingerprint(va), ds.fingerprint(te)) == (
        "ed81cf161a73d00e", "2b65b52dafe33b42", "86353a7e9c478473")
    assert ds.fingerprint(sst_dev) == "afd09b570e792bf0"
    assert ds.fingerprint(ds.sample(sst_test, 100, seed=0)) == "25c7f5208180170f"


def test_a_dataset_that_is_not_shipped_names_itself_the_places_searched_and_the_fix(no_shared):
    with pytest.raises(lg.DefinitionError) as e:
        ds.load_gsm8k("test")
    msg = str(e.value)
    assert "'gsm8k'" in msg and "gsm8k/test.jsonl" in msg
    assert str(no_shared) in msg and str(ds.packaged_data_dir()) in msg
    assert "LMGRAPH_DATA_DIR" in e.value.fix
    with pytest.raises(lg.DefinitionError, match="sst2/train.tsv"):  # only test/dev are shipped
        ds.load_sst2("train")


def test_lmgraph_data_dir_comes_first_and_the_package_fills_in_what_it_lacks(no_shared, monkeypatch):
    own = no_shared / "mydata"
    (own / "trec").mkdir(parents=True)
    (own / "trec" / "TREC_10.en.label").write_text("LOC:city Where is Aspen ?\nNUM:date When ?\n")
    monkeypatch.setenv("LMGRAPH_DATA_DIR", str(own))
    assert ds.data_dir() == own
    assert [r["question"] for r in ds.load_trec("test")] == ["Where is Aspen ?", "When ?"]
    assert len(ds.load_trec("train")) == 5444  # not in LMGRAPH_DATA_DIR: the packaged copy
    with pytest.raises(lg.DefinitionError, match=re.escape(str(own / "gsm8k" / "test.jsonl"))):
        ds.load_gsm8k("test")


def test_the_nearest_shared_data_wins_over_the_packaged_copy(no_shared, monkeypatch):
    shared = no_shared / "shared" / "data" / "sst2"
    shared.mkdir(parents=True)
    (shared / "test.tsv").write_text("sentence\tlabel\na fine film\t1\n")
    inner = no_shared / "deep" / "er"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    monkeypatch.setattr(ds, "_search_starts", lambda: (inner,))
    assert ds.data_dir() == no_shared / "shared" / "data"
    assert ds.load_sst2("test") == [{"id": "sst2-test-0", "sentence": "a fine film", "label": "positive"}]
    assert len(ds.load_sst2("dev")) == 6735  # shared/data lacks it: the packaged copy


def _listed_hashes() -> dict[str, str]:
    text = (ds.packaged_data_dir() / "README.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r"\| `([\w/.]+)` \|.*\| `([0-9a-f]{64})` \|", text)}


def test_packaged_files_match_the_hashes_in_their_provenance_readme():
    listed = _listed_hashes()
    assert set(listed) >= {"/".join(f) for f in ds.PACKAGED_FILES} | {"sst2/LICENSE"}
    for rel, digest in listed.items():
        data = (ds.packaged_data_dir() / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, rel


def test_packaged_files_are_verbatim_copies_of_shared_data_and_load_the_same_rows(monkeypatch):
    monkeypatch.delenv("LMGRAPH_DATA_DIR", raising=False)
    shared = ds._shared_data_dir()
    if shared is None or not (shared / "trec").is_dir():
        pytest.skip("shared/data (the project's offline data folder) is not beside this checkout")
    for folder, name in ds.PACKAGED_FILES:
        assert (ds.packaged_data_dir() / folder / name).read_bytes() == (shared / folder / name).read_bytes()
    from_shared = {s: ds.load_trec(s) for s in ("train", "test")} | {s: ds.load_sst2(s) for s in ("test", "dev")}
    monkeypatch.setattr(ds, "_shared_data_dir", lambda: None)
    assert ds.dataset_file("trec", "TREC_10.en.label").is_relative_to(ds.packaged_data_dir())
    from_pkg = {s: ds.load_trec(s) for s in ("train", "test")} | {s: ds.load_sst2(s) for s in ("test", "dev")}
    assert from_pkg == from_shared


def test_the_package_build_ships_the_data():
    """pyproject's package-data lists every shipped file (a wheel without them breaks the demos)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lmgraph"]
    pkg_root = root / "lmgraph"
    covered = {p.relative_to(pkg_root).as_posix() for pat in patterns for p in pkg_root.glob(pat)}
    assert covered >= {"data/" + "/".join(f) for f in ds.PACKAGED_FILES} | {"data/README.md", "data/sst2/LICENSE"}
