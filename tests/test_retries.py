"""Unit tests for target_cbx1.retries: the response table, Retry-After and the backoff policy."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from target_cbx1 import retries
from target_cbx1.retries import Action, RetryPolicy, action_for, parse_retry_after


def policy(**changes: float) -> RetryPolicy:
    values = {"max_retries": 5, "base_seconds": 1.0, "max_seconds": 60.0, "retry_after_max_seconds": 300.0}
    values.update(changes)
    return RetryPolicy(
        max_retries=int(values["max_retries"]),
        base_seconds=values["base_seconds"],
        max_seconds=values["max_seconds"],
        retry_after_max_seconds=values["retry_after_max_seconds"],
    )


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (200, Action.ACCEPT),
        (201, Action.ACCEPT),
        (400, Action.REJECT),
        (401, Action.REFRESH_TOKEN),
        (403, Action.DENY),
        (404, Action.REJECT),
        (405, Action.REJECT),
        (408, Action.RETRY),
        (422, Action.REJECT),
        (429, Action.RETRY),
        (500, Action.RETRY),
        (502, Action.RETRY),
        (503, Action.RETRY),
    ],
)
def test_action_for_status(status: int, action: Action) -> None:
    assert action_for(status) is action


@pytest.mark.parametrize(("header", "seconds"), [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("2.5", 2.5)])
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_negative_retry_after_means_no_wait() -> None:
    assert parse_retry_after("-30") == 0.0


def test_retry_after_http_date_is_seconds_from_now() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    header = format_datetime(moment, usegmt=True)  # "Wed, 01 May 2024 12:00:00 GMT"
    assert parse_retry_after(header, now=moment.timestamp() - 90) == pytest.approx(90.0)


def test_retry_after_http_date_in_the_past_means_no_wait() -> None:
    header = "Wed, 01 May 2024 12:00:00 GMT"
    now = datetime(2024, 5, 1, 13, 0, 0, tzinfo=timezone.utc).timestamp()
    assert parse_retry_after(header, now=now) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "Wed, 99 Foo 2024", "1 minute"])
def test_unreadable_or_absent_retry_after_is_none(header: str | None) -> None:
    assert parse_retry_after(header) is None


@pytest.mark.parametrize("count", [0, 1, 3, 10])
def test_delays_yield_exactly_max_retries_values(count: int) -> None:
    assert len(list(policy(max_retries=count).delays())) == count


def test_delays_stay_within_half_to_full_exponential_capped() -> None:
    retry_policy = policy(max_retries=8, base_seconds=0.5, max_seconds=10.0)
    caps = [min(0.5 * 2**n, 10.0) for n in range(8)]
    for _ in range(200):
        for delay, cap in zip(retry_policy.delays(), caps, strict=True):
            assert cap / 2 <= delay <= cap


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [
        (lambda value: value, [1, 2, 4, 8, 16, 32, 60, 60]),
        (lambda value: 0.0, [0.5, 1, 2, 4, 8, 16, 30, 30]),
    ],
)
def test_delay_bounds_are_reached_exactly(
    monkeypatch: pytest.MonkeyPatch, jitter: Callable[[float], float], expected: list[float]
) -> None:
    monkeypatch.setattr(retries.backoff, "full_jitter", jitter)
    assert list(policy(max_retries=8).delays()) == expected


def test_delays_never_exceed_max_seconds_below_base() -> None:
    delays = list(policy(max_retries=4, base_seconds=10.0, max_seconds=3.0).delays())
    assert all(1.5 <= delay <= 3.0 for delay in delays)


def test_wait_for_uses_backoff_without_retry_after() -> None:
    assert policy().wait_for(3.0, None) == 3.0


def test_wait_for_never_shorter_than_retry_after() -> None:
    assert policy().wait_for(1.0, 45.0) == 45.0


def test_wait_for_keeps_longer_backoff() -> None:
    assert policy().wait_for(8.0, 2.0) == 8.0


def test_wait_for_honours_retry_after_beyond_backoff_max() -> None:
    assert policy(max_seconds=5.0, retry_after_max_seconds=300.0).wait_for(2.0, 120.0) == 120.0


def test_wait_for_accepts_retry_after_equal_to_its_cap() -> None:
    assert policy(retry_after_max_seconds=300.0).wait_for(1.0, 300.0) == 300.0


def test_wait_for_gives_up_when_retry_after_exceeds_its_cap() -> None:
    assert policy(max_seconds=5.0, retry_after_max_seconds=300.0).wait_for(2.0, 3600.0) is None
