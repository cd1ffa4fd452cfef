"""Answers the target must survive: redirects, trickled answers, odd token lifetimes, stops while waiting."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import (
    API,
    TOKEN_URL,
    account,
    bulk_answer,
    contact,
    fixture_json,
    lines_of,
    make_config,
    run_target,
    sandbox_config,
    schema,
)
from tests.test_end_to_end import run_command, start_command, wait_until

BULK = f"{API}/api/t/v1/targets/accounts/bulk"


def accounts_and_contacts(count: int) -> str:
    return lines_of(
        [
            schema("accounts"),
            *(account(n) for n in range(count)),
            schema("contacts"),
            *(contact(n) for n in range(count)),
        ]
    )


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_stops_the_run_naming_where_it_points(sandbox, tmp_path, code):
    sandbox.add_fault(f"redirect={code}*always")

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([schema("accounts"), account(1)]))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"CBX1 answered HTTP {code}, a redirect to http://127.0.0.1:" in result.stderr
    assert "Set api_url to the API's final address" in result.stderr
    assert [e.fault for e in sandbox.exchanges] == ["redirect"]  # nothing followed it, nothing resent


def test_a_trickled_answer_is_bounded_by_the_timeout_as_a_whole(sandbox, tmp_path):
    sandbox.add_fault("trickle=6")
    config = sandbox_config(sandbox, timeout=1, max_retries=0)
    started = time.monotonic()

    result = run_command(config, tmp_path, lines_of([schema("accounts"), account(1)]))

    assert time.monotonic() - started < 5
    assert result.returncode == 0, result.stderr
    (entry,) = result.entries("accounts")
    assert entry["success"] is False
    assert "1 s timeout" in entry["error"]


@pytest.mark.parametrize("max_age", ["1e400", "Infinity", "-5", '"soon"', "null", "30"])
def test_an_odd_token_lifetime_never_crashes_nor_fetches_a_token_per_request(api, capsys, max_age):
    token = (
        f'{{"status": {{"code": "CM000"}}, "data": {{"sessionToken": "tok-123456", "maxAge": {max_age}}}}}'
    )
    api.get(TOKEN_URL, text=token)
    api.post(BULK, json=bulk_answer())
    messages = [schema("accounts"), *(account(n) for n in range(60))]

    state = run_target(make_config(batch_size=10, max_concurrency=1), messages, capsys).state

    assert state["summary"]["accounts"]["success"] == 60
    assert len([r for r in api.request_history if r.method == "GET"]) == 1


def test_a_fatal_error_ends_the_run_quickly_even_with_a_request_waiting_on_retry_after(sandbox, tmp_path):
    sandbox.add_fault("429=200")  # the first request is asked to wait 200 s
    sandbox.add_fault("status=403")  # the second one is refused: the run must stop
    config = sandbox_config(sandbox, retry_after_max_seconds=300)
    started = time.monotonic()

    result = run_command(config, tmp_path, accounts_and_contacts(5))

    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert "CBX1 refused the request (HTTP 403" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_signal_ends_a_long_retry_wait_and_exits_143(sandbox, tmp_path):
    sandbox.add_fault("429=200")
    config = sandbox_config(sandbox, retry_after_max_seconds=300, batch_size=2)  # the input stays open
    process = start_command(config, tmp_path, accounts_and_contacts(3))
    wait_until(lambda: len(sandbox.exchanges) >= 2)

    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=30)

    assert time.monotonic() - started < 8
    assert process.returncode == 143, stderr
    state = json.loads(stdout.splitlines()[-1])
    waiting = next(e for e in sandbox.exchanges if e.status == 429)
    assert state["bookmarks"][waiting.stream] == []  # the waiting request's records were never confirmed


def test_an_upsert_answer_without_data_is_a_failure(api, capsys):
    api.post(
        f"{API}/api/t/v1/targets/accounts/upsert",
        json=fixture_json("envelope_not_cm000.json") | {"status": {"code": "CM000"}},
    )

    state = run_target(make_config(process_as_batch=False), [schema("accounts"), account(1)], capsys).state

    assert state["bookmarks"]["accounts"][0]["success"] is False


@pytest.mark.parametrize("status", [404, 405])
def test_a_missing_endpoint_stops_only_its_stream_and_the_run_ends_non_zero(sandbox, tmp_path, status):
    sandbox.add_fault(f"status={status}")  # the first request: the accounts chunk
    messages = [
        schema("accounts"),
        *(account(n) for n in range(50)),
        schema("contacts"),
        *(contact(n) for n in range(5)),
    ]
    config = sandbox_config(sandbox, batch_size=10, max_concurrency=1)

    result = run_command(config, tmp_path, lines_of(messages))

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "has no endpoint" in line and "ERROR" in line]
    assert "/api/t/v1/targets/accounts/bulk" in errors[-1]
    assert "check that api_url is the API's base address" in errors[-1]
    accounts = result.entries("accounts")
    assert all("has no endpoint" in entry["error"] for entry in accounts)
    assert len([e for e in sandbox.exchanges if e.stream == "accounts"]) == 1  # not one request per chunk
    assert all(entry["success"] for entry in result.entries("contacts"))


def test_a_missing_endpoint_holds_back_the_taps_state_in_singer_mode(sandbox, tmp_path):
    sandbox.add_fault("status=404")
    state = {"type": "STATE", "value": {"bookmarks": {"accounts": {"updatedAt": "2026-11-30"}}}}
    config = sandbox_config(sandbox, state_output="singer", batch_size=5)

    result = run_command(
        config, tmp_path, lines_of([schema("accounts"), *(account(n) for n in range(10)), state])
    )

    assert result.returncode == 1
    assert result.stdout == ""  # Meltano's bookmark must not move past records never written


def test_conflicting_results_from_the_sandbox_fail_only_that_record(sandbox, tmp_path):
    sandbox.add_fault("conflict")

    result = run_command(
        sandbox_config(sandbox), tmp_path, lines_of([schema("accounts"), *(account(n) for n in range(5))])
    )

    assert result.returncode == 0, result.stderr
    failed = [e for e in result.entries("accounts") if not e["success"]]
    assert len(failed) == 1
    assert failed[0]["error"].startswith("CBX1 returned conflicting results for lookupKey")
    assert sum(e["success"] for e in result.entries("accounts")) == 4


@pytest.mark.parametrize(
    ("canned", "error"),
    [("@upsert-false", "Rejected by rule"), ("@data-null", "no id"), ("@no-data", "no id")],
)
def test_an_upsert_answer_that_confirms_nothing_is_a_failure_end_to_end(sandbox, tmp_path, canned, error):
    sandbox.add_fault(f"answer={canned}")

    result = run_command(
        sandbox_config(sandbox, process_as_batch=False, max_concurrency=1),
        tmp_path,
        lines_of([schema("accounts"), account(1), account(2)]),
    )

    assert result.returncode == 0, result.stderr
    first, second = result.entries("accounts")
    assert first["success"] is False
    assert error in first["error"]
    assert second["success"] is True


def test_a_fatal_answer_while_the_tap_still_writes_is_reported_as_itself(sandbox, tmp_path):
    sandbox.add_fault("redirect=302*always")
    config = sandbox_config(sandbox, batch_size=2)
    process = start_command(config, tmp_path, lines_of([schema("accounts"), account(1), account(2)]))
    wait_until(lambda: len(sandbox.exchanges) >= 1)
    time.sleep(0.3)
    assert process.stdin is not None
    process.stdin.write(lines_of([account(3)]))  # the tap goes on writing after the redirect
    process.stdin.flush()

    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1
    assert "CBX1 answered HTTP 302, a redirect to" in stderr
    assert "Stopped by" not in stderr


def test_a_signal_during_the_sending_after_a_bad_line_still_stops_the_run(sandbox, tmp_path):
    sandbox.add_fault("429=100*always")
    config = sandbox_config(sandbox, retry_after_max_seconds=300)
    process = start_command(config, tmp_path, lines_of([schema("accounts"), account(1)]) + "not json\n")
    wait_until(lambda: len(sandbox.exchanges) >= 1)

    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=30)

    assert time.monotonic() - started < 10
    assert process.returncode == 143, stderr


def test_trickled_headers_are_bounded_by_the_timeout_too(sandbox, tmp_path):
    sandbox.add_fault("trickle-head=8")
    config = sandbox_config(sandbox, timeout=1, max_retries=0)
    started = time.monotonic()

    result = run_command(config, tmp_path, lines_of([schema("accounts"), account(1)]))

    assert time.monotonic() - started < 5
    (entry,) = result.entries("accounts")
    assert entry["success"] is False
    assert "1 s timeout" in entry["error"]
