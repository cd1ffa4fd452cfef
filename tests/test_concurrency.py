"""Concurrent requests: the in-flight limit, one request per key at a time, input order, the rate limit."""

from __future__ import annotations

import itertools
import json
import signal
import typing as t

import pytest

from target_cbx1.ratelimit import RateLimiter
from target_cbx1.sandbox import Sandbox
from tests.conftest import ACCESS_KEY, ORG_ID, lines_of, sandbox_config
from tests.test_end_to_end import assert_matches_sandbox, run_command, start_command, wait_until

CONTACTS_SCHEMA = {"type": "SCHEMA", "stream": "contacts", "schema": {"properties": {}}, "key_properties": []}


def contacts(emails: list[str]) -> str:
    records = [
        {"type": "RECORD", "stream": "contacts", "record": {"email": email, "crmAssociationId": str(n)}}
        for n, email in enumerate(emails)
    ]
    return lines_of([CONTACTS_SCHEMA, *records])


def distinct_emails(count: int) -> list[str]:
    return [f"person{n}@example.com" for n in range(count)]


@pytest.fixture
def slow_sandbox():
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, latency_ms=100) as sandbox:
        yield sandbox


@pytest.mark.parametrize("max_concurrency", [1, 4])
def test_no_more_requests_in_flight_than_max_concurrency(slow_sandbox, tmp_path, max_concurrency):
    config = sandbox_config(slow_sandbox, max_concurrency=max_concurrency)

    result = run_command(config, tmp_path, contacts(distinct_emails(240)))

    assert result.returncode == 0, result.stderr
    assert slow_sandbox.peak_in_flight == max_concurrency
    assert_matches_sandbox(result.entries("contacts"), slow_sandbox, "contacts")


def test_concurrency_divides_the_wall_time(slow_sandbox, tmp_path):
    result = run_command(
        sandbox_config(slow_sandbox, max_concurrency=8), tmp_path, contacts(distinct_emails(320))
    )

    assert result.returncode == 0, result.stderr
    first = min(exchange.received_at for exchange in slow_sandbox.exchanges)
    last = max(t.cast(float, exchange.answered_at) for exchange in slow_sandbox.exchanges)
    assert last - first < 16 * 0.1 / 2  # 16 requests of 100 ms, one at a time, would take 1.6 s


def test_a_lookup_key_is_never_in_two_requests_at_once_and_the_last_write_wins(slow_sandbox, tmp_path):
    emails = [f"person{n % 100}@example.com" for n in range(300)]  # every key 3 times

    result = run_command(sandbox_config(slow_sandbox, max_concurrency=8), tmp_path, contacts(emails))

    assert result.returncode == 0, result.stderr
    assert slow_sandbox.peak_in_flight > 1
    for first, second in itertools.combinations(slow_sandbox.exchanges, 2):
        overlap = first.received_at < second.answered_at and second.received_at < first.answered_at
        if overlap:
            assert not set(first.lookup_keys) & set(second.lookup_keys)
    stored = slow_sandbox.records("contacts")
    for n in range(100):
        assert stored[f"person{n}@example.com"].record["crmAssociationId"] == str(200 + n)  # the last one
    assert_matches_sandbox(result.entries("contacts"), slow_sandbox, "contacts")


def test_a_repeated_key_waits_on_its_own_and_requests_stay_full(slow_sandbox, tmp_path):
    emails = [f"person{n - 5 if n % 10 == 0 and n >= 5 else n}@example.com" for n in range(400)]  # 1 in 10

    result = run_command(sandbox_config(slow_sandbox, max_concurrency=8), tmp_path, contacts(emails))

    assert result.returncode == 0, result.stderr
    sizes = [len(exchange.lookup_keys) for exchange in slow_sandbox.exchanges]
    assert len(sizes) == 20  # 400 records in full chunks of 20, none split by a repeat
    for first, second in itertools.combinations(slow_sandbox.exchanges, 2):
        if first.received_at < second.answered_at and second.received_at < first.answered_at:
            assert not set(first.lookup_keys) & set(second.lookup_keys)
    stored = slow_sandbox.records("contacts")
    for n in range(10, 400, 10):
        assert stored[f"person{n - 5}@example.com"].record["crmAssociationId"] == str(
            n
        )  # the later write won
    assert_matches_sandbox(result.entries("contacts"), slow_sandbox, "contacts")


def test_state_keeps_input_order_when_answers_come_back_out_of_order(sandbox, tmp_path):
    sandbox.add_fault("slow=0.5")  # the first request answers last

    result = run_command(sandbox_config(sandbox, max_concurrency=8), tmp_path, contacts(distinct_emails(100)))

    assert result.returncode == 0, result.stderr
    (slow,) = [e for e in sandbox.exchanges if e.fault == "slow"]  # not always the first one logged
    assert slow.answered_at > max(e.answered_at for e in sandbox.exchanges if e is not slow)
    entries = result.entries("contacts")
    assert [entry["externalId"] for entry in entries] == [str(n) for n in range(100)]
    assert_matches_sandbox(entries, sandbox, "contacts")


def test_a_stopped_run_reports_every_confirmed_outcome_and_none_still_in_flight(sandbox, tmp_path):
    sandbox.add_fault("omit=0")
    sandbox.add_fault("slow=30")  # the second request to arrive never answers in time
    state_file = tmp_path / "state.json"
    emails = distinct_emails(400)
    config = sandbox_config(sandbox, incremental_state_path=str(state_file))
    process = start_command(config, tmp_path, contacts(emails))
    wait_until(lambda: len([e for e in sandbox.exchanges if e.answered_at]) >= 8)

    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 143, stderr
    state = json.loads(stdout.splitlines()[-1])
    slow = next(exchange for exchange in sandbox.exchanges if exchange.fault == "slow")
    first_unconfirmed = min(emails.index(key) for key in slow.lookup_keys)
    answered_later = [
        e for e in sandbox.exchanges if e.answered_at and emails.index(e.lookup_keys[0]) > first_unconfirmed
    ]
    assert answered_later  # later chunks were confirmed while the slow one hung ...
    entries = state["bookmarks"]["contacts"]
    answered = {
        key for e in sandbox.exchanges if e.status == 200 and e.fault != "slow" for key in e.lookup_keys
    }
    reported = [entry["lookupKey"] for entry in entries]
    assert reported == [email for email in emails if email in answered]  # every confirmed one, in order
    assert not set(reported) & set(slow.lookup_keys)  # the hung chunk's records have no entry
    assert all(entry["success"] for entry in entries)
    assert json.loads(state_file.read_text()) == state


def test_max_requests_per_second_holds_over_every_one_second_window(sandbox, tmp_path):
    config = sandbox_config(sandbox, max_requests_per_second=8, batch_size=5)

    result = run_command(config, tmp_path, contacts(distinct_emails(100)))

    assert result.returncode == 0, result.stderr
    starts = sorted(exchange.received_at for exchange in sandbox.exchanges)
    assert len(starts) == 20
    for index, start in enumerate(starts):
        in_window = [other for other in starts[index:] if other < start + 1.0]
        assert len(in_window) <= 8
    assert starts[-1] - starts[0] >= 2.0  # 20 requests at 8 a second need more than two seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def started_within_a_second(limiter: RateLimiter, clock: FakeClock) -> int:
    """How many requests the limiter lets start at once (none may wait)."""
    count = 0
    while limiter.rate is None or count < int(limiter.rate):
        limiter.acquire()
        count += 1
        if count > 1000:
            break
    clock.now += 1.1
    return count


def test_a_429_halves_the_rate_for_the_whole_client_and_it_grows_back_gradually():
    clock = FakeClock()
    limiter = RateLimiter(max_per_second=40, clock=clock)
    assert started_within_a_second(limiter, clock) == 40

    for _ in range(10):
        limiter.acquire()
    limiter.slow_down()

    assert limiter.rate == 5  # half of the 10 sent in the last second
    rates = []
    for _ in range(15):
        clock.now += 1.1
        limiter.acquire()
        rates.append(limiter.rate)
    assert rates == sorted(rates)
    assert rates[0] == pytest.approx(6)
    assert rates[-1] == 40  # back to the ceiling, never above it


def test_the_429s_of_one_window_halve_the_rate_once():
    """Four requests in flight all drawing a 429 from one overload: half the rate, not a sixteenth."""
    clock = FakeClock()
    limiter = RateLimiter(max_per_second=40, clock=clock)
    for _ in range(20):
        limiter.acquire()
    for _ in range(4):
        limiter.slow_down()
        clock.now += 0.1
    assert limiter.rate == 10

    clock.now += 1.1
    limiter.slow_down()  # a 429 of a later window halves again
    assert limiter.rate is not None
    assert limiter.rate < 10


def test_without_a_ceiling_a_429_still_slows_the_client_until_it_recovers():
    clock = FakeClock()
    limiter = RateLimiter(max_per_second=None, clock=clock)
    for _ in range(30):
        limiter.acquire()
    limiter.slow_down()
    assert limiter.rate == 15

    for _ in range(30):
        clock.now += 1.1
        limiter.acquire()
    assert limiter.rate is None
