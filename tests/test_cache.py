"""Cache keys, the in-memory LRU and the persistent disk cache."""

from __future__ import annotations

import threading

import diskcache
import pytest

from lmgraph.cache import Cache, DiskCache, MemoryCache, cache_key, default_cache_dir
from lmgraph.cache.keys import KeyMaker
from lmgraph.lm.base import LMRequest, Message

IDENTITY = {"backend": "testing", "model": "m1"}


def chat(text: str = "hello", **kw: object) -> LMRequest:
    return LMRequest(messages=(Message(role="user", content=text),), **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- keys


def test_key_is_stable_hex_sha256() -> None:
    k1 = cache_key(IDENTITY, chat())
    k2 = cache_key(dict(reversed(list(IDENTITY.items()))), chat())
    assert k1 == k2
    assert len(k1) == 64 and int(k1, 16) >= 0


@pytest.mark.parametrize("change", [
    {"temperature": 0.7},
    {"max_tokens": 100},
    {"stop": ("\n",)},
    {"seed": 1},
    {"top_p": 0.9},
    {"json_schema": {"type": "object"}},
    {"logprobs": True},
    {"rollout": 1},
])
def test_key_changes_with_each_sampling_param(change: dict[str, object]) -> None:
    assert cache_key(IDENTITY, chat()) != cache_key(IDENTITY, chat(**change))


def test_key_changes_with_messages_prompt_and_model() -> None:
    base = cache_key(IDENTITY, chat("hello"))
    assert base != cache_key(IDENTITY, chat("hello!"))
    assert base != cache_key(IDENTITY, LMRequest(messages=(Message(role="system", content="hello"),)))
    assert base != cache_key(IDENTITY, LMRequest(prompt="hello"))
    assert base != cache_key({**IDENTITY, "model": "m2"}, chat("hello"))
    assert base != cache_key({**IDENTITY, "endpoint": "http://x"}, chat("hello"))


def test_key_maker_gives_the_same_keys_as_cache_key() -> None:
    make = KeyMaker()
    other = {**IDENTITY, "model": "m2", "api_key": "sk-secret"}
    for ident, req in [(IDENTITY, chat("a")), (IDENTITY, chat("b", temperature=0.5)), (other, chat("a")),
                       (IDENTITY, LMRequest(prompt="p\u00e9", stop=("\n",))), (other, chat("é", seed=3))]:
        assert make(ident, req) == cache_key(ident, req)  # the memoised identity follows changes


def test_request_json_is_byte_identical_to_the_generic_canonical_json() -> None:
    import random

    from lmgraph.cache.keys import canonical_json, request_json

    rng = random.Random(7)
    alphabet = ["a", "Z", " ", "\n", "\t", '"', "\\", "/", "\u00e9", "\u4e2d", "\U0001f600", "\x00", "\x1f",
                "\u2028", "\ud800", "{", "}", ":", ","]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"enum": ["x", "\u00e9"]}}}
    for _ in range(400):
        common = dict(temperature=rng.choice([0.0, 0.7, 1e-7, 1.0e20, 0, 1]), max_tokens=rng.choice([1, 256]),
                      stop=tuple(text() for _ in range(rng.randint(0, 3))), seed=rng.choice([0, 7, 2**40]),
                      top_p=rng.choice([1.0, 0.95]), json_schema=rng.choice([None, schema]),
                      logprobs=rng.choice([False, True]), rollout=rng.randint(0, 3))
        if rng.random() < 0.5:
            req = LMRequest(messages=tuple(Message(role=rng.choice(["system", "user", "assistant"]), content=text())
                                           for _ in range(rng.randint(1, 4))), **common)
        else:
            choices = rng.choice([None, (" a", " b\u00e9")])
            req = LMRequest(prompt=text(), choices=choices, **common)
        assert request_json(req) == canonical_json(req.canonical()), req
    # unexpected types take the generic path rather than a wrong text
    odd = LMRequest(prompt="p", temperature=float("nan"), top_p=True)  # type: ignore[arg-type]
    assert request_json(odd) == canonical_json(odd.canonical())


def test_key_ignores_node_and_use_cache() -> None:
    base = cache_key(IDENTITY, chat())
    assert base == cache_key(IDENTITY, chat(node="qa"))
    assert base == cache_key(IDENTITY, chat(use_cache=False))


def test_key_strips_credentials_recursively() -> None:
    base = cache_key(IDENTITY, chat())
    noisy = {
        **IDENTITY,
        "api_key": "sk-1", "OPENAI_API_KEY": "sk-2", "access_token": "t", "Secret": "s",
        "db_password": "p", "headers": {"Authorization": "Bearer x"},
        "extra": [{"client_secret": "c"}],
    }
    noisy_key = cache_key(noisy, chat())
    assert noisy_key == cache_key({**IDENTITY, "headers": {}, "extra": [{}]}, chat())
    # different secrets -> same key (secrets are not part of the key)
    other = {**noisy, "api_key": "sk-other", "headers": {"Authorization": "Bearer y"}}
    assert cache_key(other, chat()) == noisy_key
    assert base == cache_key({**IDENTITY, "api_key": "sk-1"}, chat())


# --------------------------------------------------------------------------- memory


def test_memory_cache_lru_eviction() -> None:
    c = MemoryCache(maxsize=2)
    c.set("a", {"v": 1})
    c.set("b", {"v": 2})
    assert c.get("a") == {"v": 1}  # a is now most recently used
    c.set("c", {"v": 3})  # evicts b
    assert len(c) == 2
    assert c.get("b") is None
    assert c.get("a") == {"v": 1} and c.get("c") == {"v": 3}
    c.set("a", {"v": 10})  # overwrite keeps size
    assert len(c) == 2 and c.get("a") == {"v": 10}
    c.clear()
    assert len(c) == 0 and c.get("a") is None


def test_memory_cache_values_are_isolated() -> None:
    c = MemoryCache()
    value = {"items": [1]}
    c.set("k", value)
    value["items"].append(2)
    got = c.get("k")
    assert got == {"items": [1]}
    assert got is not None
    got["items"].append(3)
    assert c.get("k") == {"items": [1]}


def test_memory_cache_thread_safe() -> None:
    c = MemoryCache(maxsize=50)

    def work(i: int) -> None:
        for j in range(200):
            c.set(f"{i}-{j}", {"j": j})
            c.get(f"{i}-{j // 2}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 50


def test_caches_satisfy_protocol(tmp_path) -> None:
    assert isinstance(MemoryCache(), Cache)
    assert isinstance(DiskCache(tmp_path / "c"), Cache)


# --------------------------------------------------------------------------- disk


def test_disk_cache_is_lazy(tmp_path) -> None:
    d = tmp_path / "lazy"
    cache = DiskCache(d)
    assert not d.exists()
    assert cache.get("missing") is None
    assert d.exists()
    cache.close()
    eager = DiskCache(tmp_path / "eager")
    assert eager.open() is eager and (tmp_path / "eager").exists()
    eager.close()


def test_disk_cache_persists_and_stats(tmp_path) -> None:
    d = tmp_path / "calls"
    first = DiskCache(d)
    first.set("k", {"text": "hi", "n": [1, 2]})
    assert first.get("k") == {"text": "hi", "n": [1, 2]}
    assert first.stats() == {"hits": 1, "memory_hits": 1, "disk_hits": 0, "misses": 0}
    first.close()

    second = DiskCache(d)
    assert second.get("k") == {"text": "hi", "n": [1, 2]}  # from disk
    assert second.get("k") == {"text": "hi", "n": [1, 2]}  # now from memory
    assert second.get("nope") is None
    assert second.stats() == {"hits": 2, "memory_hits": 1, "disk_hits": 1, "misses": 1}
    assert len(second.memory) == 1
    second.close()


def test_disk_values_are_json_strings(tmp_path) -> None:
    d = tmp_path / "calls"
    with DiskCache(d) as cache:
        cache.set("k", {"text": "héllo"})
    raw = diskcache.Cache(str(d))
    try:
        stored = raw.get("k")
        assert isinstance(stored, str)
        assert stored == '{"text": "héllo"}'
    finally:
        raw.close()


def test_disk_cache_rejects_non_json_values(tmp_path) -> None:
    with DiskCache(tmp_path / "c") as cache:
        with pytest.raises(TypeError):
            cache.set("k", {"obj": object()})
        assert cache.get("k") is None


def test_disk_cache_ignores_foreign_entries(tmp_path) -> None:
    d = tmp_path / "c"
    raw = diskcache.Cache(str(d))
    raw.set("pickled", {"a": 1})
    raw.set("garbage", "{not json")
    raw.close()
    with DiskCache(d) as cache:
        assert cache.get("pickled") is None
        assert cache.get("garbage") is None


def test_disk_cache_reopens_after_close(tmp_path) -> None:
    cache = DiskCache(tmp_path / "c", memory_size=0)
    cache.set("k", {"text": "v"})
    cache.close()
    assert cache.get("k") == {"text": "v"}
    cache.clear()
    assert cache.get("k") is None
    cache.close()


def test_default_cache_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LMGRAPH_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LMGRAPH_CACHE_DIR")
    assert default_cache_dir().parts[-3:] == (".cache", "lmgraph", "calls")


def test_response_from_dict_fast_path_equals_the_constructor() -> None:
    """LMResponse.from_dict fills frozen instances directly (hot path): it must set every field,
    exactly as the generated constructor would, for present and missing keys alike."""
    import dataclasses

    from lmgraph.lm.base import LMResponse, Usage

    full = LMResponse(text="x", usage=Usage(prompt_tokens=3, completion_tokens=4), model="m",
                      finish_reason="stop", logprobs=[{"token": "x", "logprob": -0.1}], cost=0.5)
    for data, cached in [(full.to_dict(), True), (full.to_dict(), False), ({"text": "y"}, False)]:
        fast = LMResponse.from_dict(data, cached=cached)
        u = data.get("usage") or {}
        slow = LMResponse(text=data["text"], usage=Usage(prompt_tokens=u.get("prompt_tokens", 0),
                                                         completion_tokens=u.get("completion_tokens", 0)),
                          model=data.get("model", ""), finish_reason=data.get("finish_reason"),
                          logprobs=data.get("logprobs"), cost=data.get("cost"), cached=cached)
        assert fast == slow and hash(fast.usage) == hash(slow.usage)
        assert set(vars(fast)) == {f.name for f in dataclasses.fields(LMResponse)}
        assert set(vars(fast.usage)) == {f.name for f in dataclasses.fields(Usage)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            fast.text = "z"  # type: ignore[misc]
