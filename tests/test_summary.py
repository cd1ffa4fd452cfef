"""The run summary on stderr: columns that add up to the records received, and the failures by reason."""

from __future__ import annotations

import re
import signal
import time

import pytest

from target_cbx1.ledger import COMPACT_EVERY, MAX_REASONS, OTHER_REASONS, StateLedger, reason_of
from tests.conftest import ACCOUNT_SCHEMA, account, lines_of, record, sandbox_config, schema
from tests.test_end_to_end import run_command, start_command, wait_until

TITLE = "Summary per stream (received = succeeded + existing + failed + not sent + undecided):"
COLUMNS = [
    "stream",
    "received",
    "sent",
    "succeeded",
    "existing",
    "failed",
    "not sent",
    "undecided",
    "requests",
    "retries",
    "seconds",
    "rec/s",
]
REASON = re.compile(r"^  (?P<stream>\S+): (?P<count>\d+) x (?P<kind>not sent|failed): (?P<reason>.+)$")
OTHERS = re.compile(r"^  (?P<stream>\S+): (?P<count>\d+) x other reasons$")
NAN_RECORD = (
    '{"type": "RECORD", "stream": "accounts", "record": {"domain": "nan%d.com", "annualRevenue": NaN}}'
)


def no_domain(number: int) -> dict:
    return record("accounts", crmAssociationId=f"001{number:05d}", name=f"Company {number}")


def log_lines(stderr: str) -> list[tuple[str, str]]:
    """(level, message) of each log line: `time | LEVEL | logger | message`."""
    lines = []
    for line in stderr.splitlines():
        parts = line.split(" | ", 3)
        if len(parts) == 4:
            lines.append((parts[1].strip(), parts[3]))
    return lines


def summary_table(stderr: str) -> dict[str, dict[str, str]]:
    """The summary table's rows by stream, each a column -> cell mapping."""
    messages = [message for _, message in log_lines(stderr)]
    assert messages.count(TITLE) == 1, stderr
    start = messages.index(TITLE) + 1
    header = re.split(r"\s{2,}", messages[start].strip())
    assert header == COLUMNS
    rows = {}
    for message in messages[start + 1 :]:
        cells = re.split(r"\s{2,}", message.strip())
        if len(cells) != len(header) or REASON.match(message) or OTHERS.match(message):
            break
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def reason_lines(stderr: str) -> list[tuple[str, dict[str, str]]]:
    """(level, fields) of each failure-reason line of the summary."""
    found = []
    for level, message in log_lines(stderr):
        match = REASON.match(message) or OTHERS.match(message)
        if match:
            found.append((level, match.groupdict()))
    return found


def assert_adds_up(row: dict[str, str], received: int) -> None:
    parts = ("succeeded", "existing", "failed", "not sent", "undecided")
    assert int(row["received"]) == received
    assert sum(int(row[part]) for part in parts) == received, row


def test_the_summary_adds_up_and_lists_each_reason_once_with_its_count(sandbox, tmp_path):
    messages: list[dict | str] = [
        schema("accounts", ACCOUNT_SCHEMA["properties"]),
        *(account(n) for n in range(5)),  # written
        account(0),  # an identical repeat: existing
        *(no_domain(n) for n in range(10, 13)),  # no lookup key: not sent
        account(20, domain="not a domain"),  # invalid domain: not sent
        account(21, domain="also wrong"),
        account(30, domain="umbrella_corp.com"),  # passes the target's check, CBX1 rejects it
        account(31, domain="wayne_enterprises.com"),
        NAN_RECORD % 1,  # NaN, on two different lines: not sent
        NAN_RECORD % 2,
        account(40, annualRevenue="lots"),  # does not match the schema: not sent
    ]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    row = summary_table(result.stderr)["accounts"]
    assert_adds_up(row, 16)
    assert {column: row[column] for column in COLUMNS[1:9]} == {
        "received": "16",
        "sent": "7",
        "succeeded": "5",
        "existing": "1",
        "failed": "2",
        "not sent": "8",
        "undecided": "0",
        "requests": "1",
    }
    assert result.state["summary"]["accounts"] == {"success": 5, "fail": 10, "existing": 1, "updated": 0}
    reasons = reason_lines(result.stderr)
    assert {level for level, _ in reasons} == {"INFO"}
    counted = [(fields["count"], fields["kind"], fields["reason"]) for _, fields in reasons]
    assert counted == [
        (
            "3",
            "not sent",
            "domain is required: the record has no domain, which is the lookup key CBX1 upserts by, "
            "so it was not sent",
        ),
        ("2", "not sent", "invalid domain '...': expected a host name such as acme.com"),
        ("2", "failed", "CBX1 rejected the record: Invalid domain"),
        (
            "2",
            "not sent",
            "the record holds NaN, which JSON does not allow, so the record was not sent; fix the tap or "
            "the ETL",
        ),
        (
            "1",
            "not sent",
            "record does not match the schema of stream '...': Record Message Validation Error: "
            "data.annualRevenue must be number or null, not '...'",
        ),
    ]
    for text in ("domain is required", "invalid domain", "holds NaN", "does not match the schema"):
        assert result.stderr.count(text) == 1, text  # one line per reason, not one per record


def test_past_five_reasons_the_rest_count_as_other_reasons_but_every_not_sent_reason_is_listed(
    sandbox, tmp_path
):
    for fault in ("status=409", "status=422", "not-cm000", "body=html", "answer=@upsert-false", "status=418"):
        sandbox.add_fault(fault)  # each fails the next request (one record each) its own way
    config = sandbox_config(sandbox, process_as_batch=False, max_concurrency=1, max_retries=0)
    messages = [
        schema("accounts", {}),
        *(account(n) for n in range(6)),  # one per fault
        *(account(n, domain=f"bad_{n}.com") for n in range(10, 13)),  # CBX1: Invalid domain
        no_domain(20),
        account(21, domain="not a domain"),
        {"type": "RECORD", "stream": "accounts", "record": "a string"},
    ]

    result = run_command(config, tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    row = summary_table(result.stderr)["accounts"]
    assert_adds_up(row, 12)
    assert (row["succeeded"], row["failed"], row["not sent"], row["sent"]) == ("0", "9", "3", "9")
    reasons = [fields for _, fields in reason_lines(result.stderr)]
    failed = [fields for fields in reasons if fields.get("kind") == "failed"]
    not_sent = [fields["reason"] for fields in reasons if fields.get("kind") == "not sent"]
    assert len(failed) == 5
    assert failed[0] == {
        "stream": "accounts",
        "count": "3",
        "kind": "failed",
        "reason": "CBX1 rejected the request (HTTP 400: Invalid domain)",
    }
    assert reasons[-1] == {"stream": "accounts", "count": "2"}  # 9 failed, 7 of them shown
    assert len(not_sent) == 3
    assert "the RECORD's record is text, not an object, so it was not sent" in not_sent


def test_records_in_flight_at_a_stop_are_undecided_and_the_columns_still_add_up(sandbox, tmp_path):
    sandbox.add_fault("omit=0")  # the first request is answered at once
    sandbox.add_fault("slow=20")  # the second hangs past the grace time and is abandoned
    config = sandbox_config(sandbox, max_concurrency=1, batch_size=20)
    messages = [schema("accounts", {}), no_domain(99), *(account(n) for n in range(60))]
    process = start_command(config, tmp_path, lines_of(messages))
    wait_until(lambda: len(sandbox.exchanges) >= 2)
    time.sleep(0.2)

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 143, stderr
    row = summary_table(stderr)["accounts"]
    assert_adds_up(row, 61)
    assert (row["succeeded"], row["not sent"], row["undecided"]) == ("20", "1", "40")


def test_progress_lines_report_confirmed_failed_in_flight_and_the_rate(sandbox, tmp_path):
    sandbox.add_fault("slow=0.1*always")
    config = sandbox_config(sandbox, progress_interval_seconds=0.1, batch_size=10, max_concurrency=1)
    messages = [schema("accounts", {}), *(no_domain(n) for n in range(5))]
    messages += [account(n) for n in range(5, 105)]

    result = run_command(config, tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    progress = [message for level, message in log_lines(result.stderr) if message.startswith("Progress: ")]
    assert progress
    pattern = re.compile(
        r"^Progress: (\d+) records read, (\d+) confirmed, (\d+) failed, (\d+) in flight; \d+ records/s$"
    )
    counts = []
    for line in progress:
        match = pattern.match(line)
        assert match, line
        counts.append(tuple(map(int, match.groups())))
    for read, confirmed, failed, in_flight in counts:
        assert read == confirmed + failed + in_flight
    assert counts[-1][2] == 5  # the records without a domain, failed as they were read


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("line 12: the record holds NaN", "the record holds NaN"),
        ("line 7 is a string, not an object", "the record is a string, not an object"),
        ("invalid email 'dana@initech': expected an address", "invalid email '...': expected an address"),
        ("body of 2048 bytes, over max_request_bytes (1000)", "body of N bytes, over max_request_bytes (N)"),
        ("with lookupKey 'a.com' (CRM id A2) was written", "with lookupKey '...' (CRM id ...) was written"),
        ("deletion (_sdc_deleted_at 2026-11-20T08:00:00Z); CBX1", "deletion (_sdc_deleted_at ...); CBX1"),
        ("(HTTP 400: Invalid domain)", "(HTTP 400: Invalid domain)"),
        ("owner can't be found, don't retry", "owner can't be found, don't retry"),
    ],
)
def test_a_reason_loses_what_names_the_record_and_keeps_what_names_the_failure(error, reason):
    assert reason_of(error) == reason


def test_the_tally_counts_the_compacted_prefix_and_the_rest_and_caps_distinct_reasons():
    ledger = StateLedger()
    total = 3 * COMPACT_EVERY + 8
    decided = range(total - 2)  # the last two stay undecided, after the compacted prefix
    for number in range(total):
        entry = ledger.add("accounts", f"{number:064x}", str(number))
        if number not in decided:
            continue
        if number % 3 == 0:
            entry.fail(f"CBX1 rejected the record: rule {chr(65 + number % 26)}{chr(65 + number // 26 % 26)}")
        elif number % 3 == 1:
            entry.refuse(f"line {number}: the record holds NaN, which JSON does not allow")
        else:
            entry.succeed(f"id-{number}")

    tally = ledger.tally("accounts")

    assert isinstance(ledger._entries["accounts"][0], bytes)  # the layout this test is about
    assert tally.received == total
    assert tally.failed == len(decided[0::3])
    assert tally.not_sent == len(decided[1::3])
    assert tally.succeeded == len(decided[2::3])
    assert tally.undecided == 2
    assert tally.succeeded + tally.existing + tally.failed + tally.not_sent + tally.undecided == total
    assert tally.reasons[(True, "the record holds NaN, which JSON does not allow")] == tally.not_sent
    assert len(tally.reasons) == MAX_REASONS + 1  # 50 named reasons and one "other"
    assert tally.reasons[(False, OTHER_REASONS)] == tally.failed - (MAX_REASONS - 1)
    assert sum(tally.reasons.values()) == tally.failed + tally.not_sent
