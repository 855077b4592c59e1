"""Retry arithmetic: exponential backoff with jitter, capped, honouring Retry-After."""

from __future__ import annotations

from suki_relay.deliver.retry import RetryPolicy


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    policy = RetryPolicy(initial_seconds=5, max_seconds=60)
    for tries, base in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (12, 60)]:
        for _ in range(50):
            assert base * 0.75 <= policy.delay(tries) <= base * 1.25


def test_retry_after_is_honoured_within_the_retry_window() -> None:
    policy = RetryPolicy(initial_seconds=1, max_age_seconds=100)
    assert policy.delay(1, retry_after=30) >= 30
    assert policy.delay(1, retry_after=10_000) <= 100
