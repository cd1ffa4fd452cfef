"""Reliability through the real command against the scripted sandbox: faults, bad input, resume, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from target_cbx1 import incremental
from tests.conftest import ACCESS_KEY, ORG_ID, lines_of, sandbox_config
from tests.test_end_to_end import (
    COMMAND,
    assert_matches_sandbox,
    assert_no_secrets,
    env_with,
    run_command,
    start_command,
    wait_until,
)

ACCOUNTS_SCHEMA = {"type": "SCHEMA", "stream": "accounts", "schema": {"properties": {}}, "key_properties": []}


def accounts(count: int, start: int = 0) -> list[dict]:
    return [
        {
            "type": "RECORD",
            "stream": "accounts",
            "record": {"domain": f"company{n}.com", "crmAssociationId": str(n)},
        }
        for n in range(start, start + count)
    ]


def accounts_input(count: int) -> str:
    return lines_of([ACCOUNTS_SCHEMA, *accounts(count)])


# Transient errors


def test_gateway_errors_dropped_connections_and_timeouts_are_retried(sandbox, tmp_path):
    for fault in ("502", "drop", "slow=1.5"):
        sandbox.add_fault(fault)

    result = run_command(sandbox_config(sandbox, timeout=0.5), tmp_path, accounts_input(5))

    assert result.returncode == 0, result.stderr
    assert [exchange.fault for exchange in sandbox.exchanges] == ["502", "drop", "slow", None]
    entries = result.entries("accounts")
    assert all(entry["success"] for entry in entries)
    assert_matches_sandbox(entries, sandbox, "accounts")
    assert "HTTP 502" in result.stderr
    assert "no answer within the 0.5 s timeout" in result.stderr
    assert sandbox.records("accounts")["company0.com"].writes == 2  # the slow write, then the retry


def test_retry_after_is_honoured_even_above_backoff_max(sandbox, tmp_path):
    sandbox.add_fault("429=1.5")
    config = sandbox_config(sandbox, backoff_max_seconds=0)

    started = time.monotonic()
    result = run_command(config, tmp_path, accounts_input(3))

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.5
    assert "retry 1 in 1.5 s" in result.stderr
    assert all(entry["success"] for entry in result.entries("accounts"))


def test_retry_after_beyond_the_cap_fails_the_request(sandbox, tmp_path):
    sandbox.add_fault("429=3600")
    config = sandbox_config(sandbox, retry_after_max_seconds=10)

    result = run_command(config, tmp_path, accounts_input(3))

    assert result.returncode == 0, result.stderr
    assert len(sandbox.exchanges) == 1
    for entry in result.entries("accounts"):
        assert entry["success"] is False
        assert "retry after 3600 s, longer than retry_after_max_seconds (10 s)" in entry["error"]
    assert "Request failed after its retries" in result.stderr


def test_spent_retries_fail_the_records_with_the_last_error_and_the_run_goes_on(sandbox, tmp_path):
    sandbox.add_fault("503*3")
    schema = {**ACCOUNTS_SCHEMA}
    config = sandbox_config(sandbox, max_retries=2, batch_size=2, max_concurrency=1)

    result = run_command(config, tmp_path, lines_of([schema, *accounts(4)]))

    assert result.returncode == 0, result.stderr
    entries = result.entries("accounts")
    assert [entry["success"] for entry in entries] == [False, False, True, True]
    assert entries[0]["error"] == "HTTP 503: 503 Error (gave up after 3 attempts)"
    assert_matches_sandbox(entries, sandbox, "accounts")


def test_an_outage_stops_the_run_with_the_state_so_far(sandbox, tmp_path):
    state_file = tmp_path / "incremental.json"
    config = sandbox_config(
        sandbox,
        max_retries=1,
        max_consecutive_request_failures=2,
        max_concurrency=1,
        incremental_state_path=str(state_file),
    )
    sandbox.add_fault("omit=0")  # the first chunk lands
    sandbox.add_fault("503*always")

    result = run_command(config, tmp_path, accounts_input(100))

    assert result.returncode == 1
    assert "CBX1 looks down: 2 requests in a row failed after all their retries" in result.stderr
    entries = result.entries("accounts")
    assert [entry["success"] for entry in entries] == [True] * 20 + [False] * 40  # 40 never attempted
    assert all("HTTP 503" in entry["error"] for entry in entries[20:])
    assert len(sandbox.exchanges) == 5  # 1 + 2 requests x 2 attempts; nothing after the stop
    assert json.loads(state_file.read_text()) == result.state
    assert "Traceback" not in result.stderr


# Rejections


def test_a_rejected_bulk_request_is_split_so_only_the_bad_record_fails(sandbox, tmp_path):
    sandbox.add_fault("reject=company3.com")

    result = run_command(sandbox_config(sandbox), tmp_path, accounts_input(6))

    assert result.returncode == 0, result.stderr
    entries = result.entries("accounts")
    assert [entry["success"] for entry in entries] == [True, True, True, False, True, True]
    assert entries[3]["error"] == (
        "CBX1 rejected the request (HTTP 400: Validation failed for record 1 (lookupKey 'company3.com'))"
    )
    assert_matches_sandbox(entries, sandbox, "accounts")
    assert [exchange.endpoint for exchange in sandbox.exchanges] == ["bulk"] + ["upsert"] * 6


def test_records_an_answer_says_nothing_about_are_sent_once_more(sandbox, tmp_path):
    sandbox.add_fault("omit=2")

    result = run_command(sandbox_config(sandbox, batch_size=5), tmp_path, accounts_input(5))

    assert result.returncode == 0, result.stderr
    assert "CBX1's answer had no result for 2 records; sending them once more" in result.stderr
    assert [entry["success"] for entry in result.entries("accounts")] == [True] * 5
    assert_matches_sandbox(result.entries("accounts"), sandbox, "accounts")
    assert [len(exchange.lookup_keys) for exchange in sandbox.exchanges] == [5, 2]


def test_a_record_still_without_a_result_when_sent_once_more_fails(sandbox, tmp_path):
    sandbox.add_fault("omit*2")  # the chunk's answer, then that of the record sent once more

    result = run_command(sandbox_config(sandbox, batch_size=5), tmp_path, accounts_input(5))

    assert result.returncode == 0, result.stderr
    failed = [entry for entry in result.entries("accounts") if not entry["success"]]
    assert len(failed) == 1
    assert failed[0]["error"] == (
        f"no result returned for lookupKey {failed[0]['lookupKey']!r}: CBX1 answered the request but "
        "said nothing about this record"
    )
    assert len(sandbox.exchanges) == 2


def test_401s_to_three_fresh_tokens_in_a_row_stop_the_run_as_a_credentials_problem(sandbox, tmp_path):
    sandbox.add_fault("401*4")

    result = run_command(sandbox_config(sandbox), tmp_path, accounts_input(3))

    assert result.returncode == 1
    assert (
        "CBX1 rejected a freshly issued session token (HTTP 401: Session token has been revoked), "
        "3 times in a row" in result.stderr
    )
    assert result.state["bookmarks"]["accounts"] == []
    assert_no_secrets(result, sandbox)


def test_a_401_to_a_fresh_token_is_repeated_with_another(sandbox, tmp_path):
    """With requests in flight, one request's 401 can revoke the token another was just handed
    (found by the chaos soak): that is no credentials problem yet."""
    sandbox.add_fault("401*3")

    result = run_command(sandbox_config(sandbox), tmp_path, accounts_input(3))

    assert result.returncode == 0, result.stderr
    assert [entry["success"] for entry in result.entries("accounts")] == [True] * 3
    assert result.stderr.count("fetching a new session token") == 3


def test_403_stops_the_run_as_a_permissions_problem(sandbox, tmp_path):
    headers = [{"name": "x-organisation-id", "value": "org-someone-else"}]

    result = run_command(sandbox_config(sandbox, custom_headers=headers), tmp_path, accounts_input(3))

    assert result.returncode == 1
    assert (
        "CBX1 refused the request (HTTP 403: x-organisation-id does not match the session)" in result.stderr
    )
    assert "ask a CBX1 admin" in result.stderr
    assert len(sandbox.exchanges) == 1


@pytest.mark.parametrize(
    ("body", "quoted"),
    [
        ("html", "Scheduled maintenance"),
        ("empty", "(empty body)"),
        ("truncated", '{"status": {"code": "CM000", "message": "Succ'),
    ],
)
def test_a_2xx_that_is_not_the_envelope_is_retried_then_fails_the_records_quoting_the_body(
    sandbox, tmp_path, body, quoted
):
    sandbox.add_fault(f"body={body}*always")

    result = run_command(sandbox_config(sandbox, max_retries=2), tmp_path, accounts_input(2))

    assert result.returncode == 0, result.stderr
    for entry in result.entries("accounts"):
        assert entry["success"] is False
        assert entry["error"] == (
            f"CBX1 answered HTTP 200 with a body that is not the documented JSON envelope: {quoted!r} "
            "(gave up after 3 attempts)"
        )
    assert len(sandbox.exchanges) == 3


def test_a_2xx_that_is_not_the_envelope_once_is_retried_and_the_records_land(sandbox, tmp_path):
    """An HTML page from a proxy on the way, once: the chunk is sent again (found by the chaos soak)."""
    sandbox.add_fault("body=html")

    result = run_command(sandbox_config(sandbox), tmp_path, accounts_input(3))

    assert result.returncode == 0, result.stderr
    assert [entry["success"] for entry in result.entries("accounts")] == [True] * 3
    assert "body that is not the documented JSON envelope" in result.stderr  # the retry's WARNING
    assert_matches_sandbox(result.entries("accounts"), sandbox, "accounts")


# Bad input


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"type": "RECORD", "stream": "accounts", "record": {"domain": ', "line 23 is not valid JSON"),
        (
            '{"type": "RECORD", "stream": "leads", "record": {"email": "a@b.co"}}',
            "line 23: A record for stream",
        ),
        (
            '{"type": "SCHEMA", "stream": "leads", "schema": {"type": "object"}}',
            "line 23: The SCHEMA message",
        ),
        ('{"type": "BOOKMARK"}', "line 23: not a Singer message (type 'BOOKMARK'"),
    ],
)
def test_bad_input_stops_the_run_naming_the_line_after_printing_the_state(
    sandbox, tmp_path, bad_line, message
):
    text = accounts_input(21) + bad_line + "\n" + lines_of(accounts(5, start=100))

    result = run_command(sandbox_config(sandbox, batch_size=20), tmp_path, text)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    entries = result.entries("accounts")
    assert len(entries) == 21  # every record read before the bad line was sent and confirmed
    assert_matches_sandbox(entries, sandbox, "accounts")


def test_a_record_that_breaks_its_schema_fails_alone(sandbox, tmp_path):
    schema = {
        "type": "SCHEMA",
        "stream": "accounts",
        "schema": {"properties": {"domain": {"type": "string"}, "employees": {"type": "integer"}}},
        "key_properties": [],
    }
    records = [
        {"type": "RECORD", "stream": "accounts", "record": {"domain": "a.com", "employees": 5}},
        {"type": "RECORD", "stream": "accounts", "record": {"domain": "b.com", "employees": "many"}},
    ]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([schema, *records]))

    assert result.returncode == 0, result.stderr
    good, bad = result.entries("accounts")
    assert good["success"] is True
    assert bad["error"].startswith("record does not match the schema of stream 'accounts'")
    assert bad["error"].endswith("data.employees must be integer, not 'many'")


def test_a_stream_without_a_lookup_field_fails_its_records_and_others_go_on(sandbox, tmp_path):
    deals = {"type": "SCHEMA", "stream": "deals", "schema": {"properties": {}}, "key_properties": []}
    lines = [
        ACCOUNTS_SCHEMA,
        deals,
        {"type": "RECORD", "stream": "deals", "record": {"amount": 5}},
        *accounts(2),
    ]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of(lines))

    assert result.returncode == 0, result.stderr
    (deal,) = result.entries("deals")
    assert "stream 'deals' has no lookup field" in deal["error"]
    assert "lookup_fields" in deal["error"]
    assert result.stderr.count("stream 'deals' has no lookup field") == 1
    assert all(entry["success"] for entry in result.entries("accounts"))


# Crash safety and resume


def test_a_killed_run_resumes_from_the_incremental_file_without_sending_twice(tmp_path):
    from target_cbx1.sandbox import Sandbox

    state_file = tmp_path / "incremental_target_state.json"
    text = accounts_input(600)
    input_file = tmp_path / "input.singer"
    input_file.write_text(text)
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, latency_ms=150) as sandbox:
        config_file = tmp_path / "config.json"
        config = sandbox_config(sandbox, incremental_state_path=str(state_file), max_concurrency=1)
        config_file.write_text(json.dumps(config))
        with input_file.open() as stdin:
            process = subprocess.Popen(
                [COMMAND, "--config", str(config_file)],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env_with(None),
            )
        journal = state_file.with_name(state_file.name + ".journal")
        deadline = time.monotonic() + 20
        while not (journal.exists() and journal.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.1)
        process.kill()  # no chance to write anything more
        process.communicate(timeout=10)
        earlier = incremental.IncrementalStateFile(state_file).load()  # the file and its journal
        assert earlier is not None
        saved = earlier["bookmarks"]["accounts"]
        assert 0 < len(saved) < 600
        assert all(entry["success"] for entry in saved)
        assert_no_partial_claims(saved, sandbox)
        sent_before = len(sandbox.exchanges)

        sandbox.latency = 0
        result = run_command(sandbox_config(sandbox, incremental_state_path=str(state_file)), tmp_path, text)

        assert result.returncode == 0, result.stderr
        entries = result.entries("accounts")
        assert [entry["externalId"] for entry in entries] == [str(n) for n in range(600)]
        assert all(entry["success"] for entry in entries)
        assert result.state["summary"]["accounts"] == {"success": 600, "fail": 0, "existing": 0, "updated": 0}
        assert_matches_sandbox(entries, sandbox, "accounts")
        resent = {key for exchange in sandbox.exchanges[sent_before:] for key in exchange.lookup_keys}
        assert resent.isdisjoint(entry["lookupKey"] for entry in saved)
        assert f"Resuming from {state_file}: {len(saved)} entries" in result.stderr


def assert_no_partial_claims(entries: list[dict], sandbox) -> None:
    stored = sandbox.records("accounts")
    for entry in entries:
        assert entry["id"] == stored[entry["lookupKey"]].id


def test_failed_records_are_retried_on_resume_and_replace_their_old_entries(sandbox, tmp_path):
    state_file = tmp_path / "state.json"
    config = sandbox_config(
        sandbox, incremental_state_path=str(state_file), max_retries=0, batch_size=2, max_concurrency=1
    )
    sandbox.add_fault("503")
    first = run_command(config, tmp_path, accounts_input(4))
    assert [entry["success"] for entry in first.entries("accounts")] == [False, False, True, True]

    second = run_command(config, tmp_path, accounts_input(4))

    entries = second.entries("accounts")
    assert [entry["success"] for entry in entries] == [True] * 4
    assert [entry["externalId"] for entry in entries] == ["0", "1", "2", "3"]  # this run's input order
    assert second.state["summary"]["accounts"] == {"success": 4, "fail": 0, "existing": 0, "updated": 0}
    assert [exchange.lookup_keys for exchange in sandbox.exchanges[-1:]] == [("company0.com", "company1.com")]


def test_hotglue_job_folder_is_the_default_place_of_the_incremental_file(tmp_path, monkeypatch):
    monkeypatch.setattr(incremental, "HOTGLUE_HOME", tmp_path)
    (tmp_path / "job-7").mkdir()

    monkeypatch.setenv("JOB_ID", "job-7")
    assert incremental.state_file_path(None) == tmp_path / "job-7" / "incremental_target_state.json"
    assert incremental.state_file_path("/elsewhere/state.json") == Path("/elsewhere/state.json")
    monkeypatch.setenv("JOB_ID", "job-8")  # no such folder: off
    assert incremental.state_file_path(None) is None
    monkeypatch.delenv("JOB_ID")
    assert incremental.state_file_path(None) is None


# Signals


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_stops_reading_and_writes_only_confirmed_outcomes(tmp_path, signal_number):
    from target_cbx1.sandbox import Sandbox

    state_file = tmp_path / "state.json"
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, latency_ms=100) as sandbox:
        config = sandbox_config(sandbox, incremental_state_path=str(state_file))
        process = start_command(config, tmp_path, accounts_input(1000))
        wait_until(lambda: len(sandbox.exchanges) >= 3)

        process.send_signal(signal_number)
        started = time.monotonic()
        stdout, stderr = process.communicate(timeout=30)

        assert time.monotonic() - started < 5  # the requests in flight finish, nothing new starts
        assert process.returncode == 128 + signal_number, stderr  # 143 for SIGTERM, 130 for SIGINT
        state = json.loads(stdout.splitlines()[-1])
        entries = state["bookmarks"]["accounts"]
        assert 3 * 20 <= len(entries) < 1000
        assert all(entry["success"] for entry in entries)
        assert_matches_sandbox(entries, sandbox, "accounts")
        assert json.loads(state_file.read_text()) == state
        assert f"Stopped by {signal.Signals(signal_number).name}" in stderr


def test_a_request_hanging_at_the_signal_is_abandoned_after_the_grace_time(sandbox, tmp_path):
    sandbox.add_fault("omit=0")
    sandbox.add_fault("slow=20")
    process = start_command(sandbox_config(sandbox, max_concurrency=1), tmp_path, accounts_input(60))
    wait_until(lambda: len(sandbox.exchanges) >= 2)
    time.sleep(0.2)

    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=30)

    assert 4 < time.monotonic() - started < 10
    assert process.returncode == 143, stderr
    entries = json.loads(stdout.splitlines()[-1])["bookmarks"]["accounts"]
    assert len(entries) == 20  # the slow chunk's outcome is unknown, so its records have no entry
    assert "Requests still in flight after 5 s were abandoned" in stderr


# Secrets


def test_no_secret_appears_in_any_output_of_faulty_runs_even_at_debug(sandbox, tmp_path):
    for fault in ("401", "503", "drop", "body=html", "reject=company2.com"):
        sandbox.add_fault(fault)
    state_file = tmp_path / "state.json"
    config = {**sandbox_config(sandbox, incremental_state_path=str(state_file)), "Code": ACCESS_KEY}
    debug = {"LOGLEVEL": "DEBUG"}

    faulty = run_command(config, tmp_path, accounts_input(5), env=debug)
    refused = run_command(
        {**config, "access_key": "ak-wrong-1234567"}, tmp_path, accounts_input(1), env=debug
    )

    assert "DEBUG" in faulty.stderr  # the scan covers debug output, the transport's included
    assert "target-cbx1.transport" in faulty.stderr
    for result in (faulty, refused):
        assert_no_secrets(result, sandbox)
        assert "Bearer " not in result.stderr.replace("Bearer ***", "")
    assert "ak-wrong-1234567" not in refused.stdout + refused.stderr
    saved = state_file.read_text()
    assert ACCESS_KEY not in saved
    assert not [token for token in sandbox.tokens if token in saved]


def test_a_resume_gives_every_record_its_entry_in_this_runs_order(sandbox, tmp_path):
    state_file = tmp_path / "state.json"
    records = accounts(6)
    messages = [records[0], records[1], records[1], *records[2:], records[3]]  # two identical repeats
    first = run_command(
        sandbox_config(sandbox), tmp_path, lines_of([ACCOUNTS_SCHEMA, records[3], records[1]])
    )
    state_file.write_text(first.stdout.splitlines()[-1])  # what a crashed run had confirmed
    sent_before = len(sandbox.exchanges)

    second = run_command(
        sandbox_config(sandbox, incremental_state_path=str(state_file)),
        tmp_path,
        lines_of([ACCOUNTS_SCHEMA, *messages]),
    )

    assert second.returncode == 0, second.stderr
    entries = second.entries("accounts")
    assert [entry["externalId"] for entry in entries] == [m["record"]["crmAssociationId"] for m in messages]
    assert all(entry["success"] for entry in entries)
    resent = [key for exchange in sandbox.exchanges[sent_before:] for key in exchange.lookup_keys]
    assert sorted(resent) == ["company0.com", "company2.com", "company4.com", "company5.com"]
    assert second.state["summary"]["accounts"] == {"success": 6, "fail": 0, "existing": 2, "updated": 0}


def test_a_resume_never_resends_a_failure_that_a_later_write_of_its_key_superseded(sandbox, tmp_path):
    state_file = tmp_path / "state.json"
    old = {
        "type": "RECORD",
        "stream": "accounts",
        "record": {"crmAssociationId": "A1", "domain": "acme.com", "name": "Old"},
    }
    new = {
        "type": "RECORD",
        "stream": "accounts",
        "record": {"crmAssociationId": "A2", "domain": "acme.com", "name": "New"},
    }
    config = sandbox_config(sandbox, incremental_state_path=str(state_file), max_concurrency=1)
    sandbox.add_fault("status=409")  # CBX1 refuses the old record: it fails
    first = run_command(config, tmp_path, lines_of([ACCOUNTS_SCHEMA, old, new]))
    assert [entry["success"] for entry in first.entries("accounts")] == [False, True]
    sent_before = len(sandbox.exchanges)

    second = run_command(config, tmp_path, lines_of([ACCOUNTS_SCHEMA, old, new]))

    assert second.returncode == 0, second.stderr
    assert sandbox.exchanges[sent_before:] == []  # nothing is sent again
    assert sandbox.records("accounts")["acme.com"].record["name"] == "New"
    superseded, written = second.entries("accounts")
    assert superseded["success"] is False
    assert "superseded: a later record with lookupKey 'acme.com' (CRM id A2)" in superseded["error"]
    assert written["success"] is True
