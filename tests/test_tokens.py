"""The one token cache (deliver/tokens.py) that Suki's login and OAuth2 tokens share."""

from __future__ import annotations

import threading
import time

from suki_relay.deliver.tokens import TokenCache, shared


def counting(lifetime: float) -> tuple[TokenCache, list[int]]:
    fetched: list[int] = []

    def fetch() -> tuple[str, float]:
        fetched.append(1)
        return f"t{len(fetched)}", lifetime

    return TokenCache(fetch, max_margin=60.0), fetched


def test_a_token_is_fetched_once_and_kept() -> None:
    cache, fetched = counting(3600.0)
    assert [cache.get() for _ in range(5)] == ["t1"] * 5
    assert len(fetched) == 1


def test_a_short_lived_token_is_refreshed_at_half_its_life() -> None:
    cache, _ = counting(0.4)
    assert cache.get() == "t1"
    time.sleep(0.25)  # past half of 0.4 s (the margin is min(60, lifetime / 2))
    assert cache.get() == "t2"


def test_threads_meeting_one_refused_token_fetch_once() -> None:
    cache, fetched = counting(3600.0)
    refused = cache.get()
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(stale=refused)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert got == ["t2"] * 8
    assert len(fetched) == 2


def test_one_holder_per_credential() -> None:
    made: list[object] = []

    def make() -> object:
        made.append(object())
        return made[-1]

    assert shared(("test", "a"), make) is shared(("test", "a"), make)
    assert shared(("test", "b"), make) is not shared(("test", "a"), make)
    assert len(made) == 2
