"""Singer state mode, the results file, dry runs and progress, through the real command."""

from __future__ import annotations

import json
import select
import subprocess

from target_cbx1.sandbox import Sandbox
from tests.conftest import ACCESS_KEY, ORG_ID, lines_of, sandbox_config
from tests.test_end_to_end import assert_matches_sandbox, run_command, start_command, wait_until
from tests.test_summary import COLUMNS

ACCOUNTS = {"type": "SCHEMA", "stream": "accounts", "schema": {"properties": {}}, "key_properties": []}


def account(n: int) -> dict:
    return {
        "type": "RECORD",
        "stream": "accounts",
        "record": {"domain": f"c{n}.com", "crmAssociationId": str(n)},
    }


def state(position: int) -> dict:
    return {"type": "STATE", "value": {"bookmarks": {"companies": {"updatedAt": position}}}}


def test_singer_mode_forwards_each_tap_state_only_once_its_records_are_written(tmp_path):
    messages = [
        ACCOUNTS,
        *map(account, range(30)),
        state(30),
        state(30),
        *map(account, range(30, 45)),
        state(45),
    ]
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, latency_ms=150) as sandbox:
        config = sandbox_config(sandbox, state_output="singer", results_path=str(tmp_path / "results.json"))
        process = start_command(config, tmp_path, lines_of(messages))
        assert process.stdin is not None
        process.stdin.close()
        assert process.stdout is not None
        forwarded = []
        for line in process.stdout:
            forwarded.append(json.loads(line))
            covered = {f"c{n}.com" for n in range(forwarded[-1]["bookmarks"]["companies"]["updatedAt"])}
            carrying = [e for e in sandbox.exchanges if covered & set(e.lookup_keys)]
            assert covered <= {key for e in carrying for key in e.lookup_keys}, "STATE before its records"
            assert all(e.answered_at is not None for e in carrying), "STATE before the answers"
        assert process.wait(timeout=30) == 0

    assert forwarded == [state(30)["value"], state(45)["value"]]  # bare values; the repeat written once
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["bookmarks"]["accounts"]) == 45
    assert results["summary"]["accounts"]["success"] == 45
    assert_matches_sandbox(results["bookmarks"]["accounts"], sandbox, "accounts")


def test_singer_mode_holds_the_state_back_after_a_request_failed_its_retries(sandbox, tmp_path):
    sandbox.add_fault("503")
    config = sandbox_config(sandbox, state_output="singer", max_retries=0, batch_size=10, max_concurrency=1)

    result = run_command(config, tmp_path, lines_of([ACCOUNTS, *map(account, range(20)), state(20)]))

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the next run must read those records again
    assert "the tap's STATE is not advanced past it" in result.stderr
    assert len(sandbox.records("accounts")) == 10


def test_hotglue_mode_does_not_forward_tap_state(sandbox, tmp_path):
    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([ACCOUNTS, account(1), state(1)]))

    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert set(json.loads(lines[0])) == {"bookmarks", "summary"}


def test_dry_run_sends_nothing_shows_the_bodies_and_claims_no_success(sandbox, tmp_path):
    config = sandbox_config(sandbox, dry_run=True, results_path=str(tmp_path / "results.json"))

    result = run_command(config, tmp_path)

    assert result.returncode == 0, result.stderr
    assert sandbox.exchanges == []
    assert sandbox.tokens == {}  # not even a token was fetched
    assert "Dry run: POST api/t/v1/targets/accounts/bulk would send 6 records:" in result.stderr
    assert '"annualRevenue": 12500000.5' in result.stderr  # numbers exactly as they would be sent
    assert "accounts: 9 records read, 6 would be sent in 1 request(s), 2 failed the checks" in result.stderr
    assert "1 x invalid domain 'not a domain'" in result.stderr
    for output in (result.state, json.loads((tmp_path / "results.json").read_text())):
        entries = [e for stream in output["bookmarks"].values() for e in stream]
        assert len(entries) == 17
        assert not any(entry["success"] for entry in entries)


def test_dry_run_in_singer_mode_writes_no_state(tmp_path):
    config = {
        "api_url": "http://127.0.0.1:9",  # nothing listens there, and nothing tries
        "access_key": ACCESS_KEY,
        "org_id": ORG_ID,
        "dry_run": True,
        "state_output": "singer",
    }

    result = run_command(config, tmp_path, lines_of([ACCOUNTS, account(1), state(1)]))

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "1 would be sent" in result.stderr


def test_progress_lines_and_the_final_summary_table(tmp_path):
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, latency_ms=100) as sandbox:
        sandbox.add_fault("503")
        config = sandbox_config(sandbox, progress_interval_seconds=0.2, max_concurrency=1)

        result = run_command(config, tmp_path, lines_of([ACCOUNTS, *map(account, range(200))]))

    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if "Progress: " in line]
    assert progress
    assert "records read" in progress[0]
    assert "confirmed" in progress[0]
    assert "in flight" in progress[0]
    assert "records/s" in progress[0]
    table = result.stderr.split("Summary per stream")[1].splitlines()
    header, row = table[1].split("|")[-1].split("  "), table[2].split("|")[-1].split()
    assert [cell.strip() for cell in header if cell.strip()] == COLUMNS
    assert row[:10] == ["accounts", "200", "200", "200", "0", "0", "0", "0", "10", "1"]


def test_a_tap_writing_state_every_five_records_still_gets_full_requests(sandbox, tmp_path):
    messages: list[dict] = [ACCOUNTS]
    for n in range(0, 200, 5):
        messages += [*map(account, range(n, n + 5)), state(n + 5)]

    result = run_command(sandbox_config(sandbox, state_output="singer"), tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    sizes = [len(exchange.lookup_keys) for exchange in sandbox.exchanges]
    assert sum(sizes) == 200
    assert sum(sizes) / len(sizes) >= 15
    forwarded = [json.loads(line) for line in result.stdout.splitlines()]
    assert forwarded[-1] == state(200)["value"]
    positions = [value["bookmarks"]["companies"]["updatedAt"] for value in forwarded]
    assert positions == sorted(positions)


def first_line_within(process: subprocess.Popen, seconds: float) -> str:
    """The next stdout line of a running command; the command is killed if none comes in time."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], seconds)
    if not readable:
        process.kill()
        raise AssertionError(f"no line on stdout within {seconds} s")
    return process.stdout.readline()


def test_a_slow_tap_s_records_and_state_move_after_max_chunk_wait_seconds(sandbox, tmp_path):
    config = sandbox_config(sandbox, state_output="singer", max_chunk_wait_seconds=0.5)
    process = start_command(config, tmp_path, lines_of([ACCOUNTS, account(1), account(2), state(2)]))
    assert process.stdin is not None
    assert process.stdout is not None

    line = first_line_within(process, 10)  # forwarded while the tap is still running, and silent

    assert json.loads(line) == state(2)["value"]
    assert len(sandbox.exchanges) == 1
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def test_a_silent_tap_s_records_are_sent_after_max_chunk_wait_seconds_without_another_line(sandbox, tmp_path):
    """HotGlue mode: the tap has sent two records and says nothing more for a while; they still go."""
    config = sandbox_config(sandbox, max_chunk_wait_seconds=0.5)
    process = start_command(config, tmp_path, lines_of([ACCOUNTS, account(1), account(2)]))
    assert process.stdin is not None

    wait_until(lambda: len(sandbox.records("accounts")) == 2, seconds=10)

    assert len(sandbox.records("accounts")) == 2
    assert process.poll() is None  # still reading: the input has not ended
    process.stdin.close()
    assert process.wait(timeout=30) == 0
