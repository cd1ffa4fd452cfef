"""The chaos soak (bench/soak.py): its checks catch what they are for, and a bounded soak passes.

The bounded soak is `make soak` made small: 2,000 records, two SIGKILLs, two fixed seeds, through the
real command against the chaos sandbox; it fails on any violation of the soak's invariants.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import soak  # noqa: E402
import soak_check as check  # noqa: E402
from soak_check import Attempt, Findings, InputRecord  # noqa: E402

A1 = InputRecord(0, "contacts", "CONTACT", "ann@x.com", "c-0")
B1 = InputRecord(1, "contacts", "CONTACT", "bob@x.com", "c-1")
A2 = InputRecord(2, "leads", "CONTACT", "ann@x.com", "l-2")
LOCAL = InputRecord(3, "leads", "CONTACT", None, "l-3", design="local")
REJECTED = InputRecord(4, "leads", "CONTACT", "eve@x.com", "l-4", "rejected", "Owner 'nobody' not found")
RECORDS = [A1, B1, A2, LOCAL, REJECTED]


def entry(record: InputRecord, success: bool, error: str | None = None, entity: str | None = None) -> dict:
    found = {"hash": f"h{record.seq}", "success": success, "id": entity, "externalId": record.external_id}
    return {**found, "lookupKey": record.key} | ({"error": error} if error else {})


def state(*entries: dict) -> dict:
    bookmarks: dict[str, list[dict]] = {"contacts": [], "leads": []}
    for listed in entries:
        bookmarks["contacts" if listed["externalId"].startswith("c-") else "leads"].append(listed)
    return {"bookmarks": bookmarks}


GOOD = state(
    entry(A1, True, entity="id-ann"),
    entry(B1, True, entity="id-bob"),
    entry(A2, True, entity="id-ann"),
    entry(LOCAL, False, "lookupKey is required"),
    entry(REJECTED, False, "CBX1 rejected the record: Owner 'nobody' not found"),
)
HELD = {("CONTACT", "ann@x.com"): ("id-ann", 2), ("CONTACT", "bob@x.com"): ("id-bob", 1)}
WRITES = {("CONTACT", "ann@x.com"): {0, 2}, ("CONTACT", "bob@x.com"): {1}}


def checked(
    the_state: dict, held: dict = HELD, writes: dict = WRITES, sent: set[int] | None = None
) -> Findings:
    findings = Findings()
    entries = check.entries_by_record(RECORDS, the_state, findings)
    check.check_successes(RECORDS, entries, held, writes, findings)
    check.classify_failures(RECORDS, entries, {0, 1, 2, 4} if sent is None else sent, findings)
    check.check_last_write(RECORDS, entries, held, findings)
    return findings


def test_a_consistent_state_passes_every_check():
    findings = checked(GOOD)
    assert findings.violations == {}
    assert findings.counts["successes verified"] == 3
    assert findings.failures == {"local check": 1, "rejected by CBX1": 1}


def test_a_missing_or_misplaced_entry_is_caught():
    bookmarks = GOOD["bookmarks"]
    assert (
        "one entry per record"
        in checked({"bookmarks": {**bookmarks, "contacts": bookmarks["contacts"][:1]}}).violations
    )
    swapped = {**bookmarks, "contacts": bookmarks["contacts"][::-1]}
    assert "one entry per record" in checked({"bookmarks": swapped}).violations


def test_a_success_cbx1_does_not_hold_is_caught():
    wrong_id = state(*(dict(e, id="id-other") if e["externalId"] == "c-1" else e for e in _entries(GOOD)))
    assert "no success CBX1 does not hold" in checked(wrong_id).violations
    never_written = {**WRITES, ("CONTACT", "bob@x.com"): set()}
    assert "no success CBX1 does not hold" in checked(GOOD, writes=never_written).violations


def test_a_failure_without_a_known_cause_is_caught():
    odd = state(
        *(
            dict(e, success=False, id=None, error="something else") if e["externalId"] == "c-1" else e
            for e in _entries(GOOD)
        )
    )
    assert "every failure has a known cause" in checked(odd).violations
    assert (
        "every failure has a known cause" in checked(GOOD, sent={0, 1, 2, 3, 4}).violations
    )  # a local one was sent


def test_faults_given_up_on_and_superseded_records_are_causes():
    given_up = entry(A1, False, "HTTP 503: 503 Error (gave up after 7 attempts)")
    findings = checked(state(given_up, *_entries(GOOD)[1:]), held=HELD)
    assert findings.failures["fault: HTTP 503 (retries spent)"] == 1
    superseded = entry(A1, False, "superseded: a later record with lookupKey 'ann@x.com' ...")
    assert checked(state(superseded, *_entries(GOOD)[1:])).failures["superseded by a later record"] == 1
    alone = state(*_entries(GOOD)[:2], entry(A2, False, "superseded: ..."), *_entries(GOOD)[3:])
    assert (
        "every failure has a known cause"
        in checked(alone, held={**HELD, ("CONTACT", "ann@x.com"): ("id-ann", 0)}).violations
    )


def test_older_data_in_the_store_is_caught_and_a_lost_answer_is_counted():
    older = {**HELD, ("CONTACT", "ann@x.com"): ("id-ann", 0)}
    assert "last write wins" in checked(GOOD, held=older).violations
    lost = state(
        *_entries(GOOD)[:2],
        entry(A2, False, "no result returned for lookupKey 'ann@x.com'"),
        *_entries(GOOD)[3:],
    )
    findings = Findings()
    entries = check.entries_by_record(RECORDS, lost, findings)
    assert check.check_last_write(RECORDS, entries, HELD, findings) == 1
    assert findings.violations == {}


def test_two_requests_of_one_key_in_flight_are_caught_but_one_after_the_other_are_not():
    first = Attempt(0, 1.0, 2.0, (("CONTACT", "ann@x.com", 0),))
    after = Attempt(0, 2.0, 2.5, (("CONTACT", "ann@x.com", 2),))
    overlapping = Attempt(0, 1.5, 2.5, (("CONTACT", "ann@x.com", 2),))
    other_key = Attempt(0, 1.5, 2.5, (("CONTACT", "bob@x.com", 1),))
    findings = Findings()
    check.check_in_flight([first, after, other_key], findings)
    assert findings.violations == {}
    check.check_in_flight([first, overlapping], findings)
    assert "one request per key in flight" in findings.violations


def test_more_requests_in_a_second_than_the_limit_are_caught():
    findings = Findings()
    check.check_rate({0: [1 + n / 10 for n in range(30)]}, 10, findings)
    assert findings.violations == {}
    assert findings.counts["peak request starts in 1 s"] == 10
    check.check_rate({1: [1 + n / 11 for n in range(11)]}, 10, findings)
    assert "max_requests_per_second" in findings.violations


def test_the_probe_notes_each_request_start_of_the_target(tmp_path):
    """bench/soak_probe, loaded as sitecustomize, records when the rate limiter lets a request start."""
    starts = tmp_path / "starts"
    code = "from target_cbx1.ratelimit import RateLimiter; r = RateLimiter(None); r.acquire(); r.acquire()"
    env = {"PYTHONPATH": str(REPO / "bench" / "soak_probe"), "SOAK_STARTS_FILE": str(starts)}
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, timeout=60)
    first, second = (float(line) for line in starts.read_text().split())
    assert first <= second


def test_a_resume_sending_an_older_record_after_a_newer_one_was_confirmed_is_caught():
    findings = Findings()
    resent = Attempt(1, 5.0, 5.1, (("CONTACT", "ann@x.com", 0),))
    check.check_no_older_resend(RECORDS, [resent], {0: set(), 1: {1}}, findings)
    assert findings.violations == {}
    check.check_no_older_resend(RECORDS, [resent], {0: set(), 1: {2}}, findings)
    assert "no older record re-sent" in findings.violations


def test_a_secret_in_any_encoding_is_caught():
    secret = "sbx.abcdefghijklmnopqrstuvwxyz0123"
    findings = Findings()
    check.check_secrets({"clean": b"Bearer <token>"}, [secret], findings)
    assert findings.violations == {}
    leaks = {"raw": secret.encode(), "base64": base64.b64encode(b"Authorization: Bearer " + secret.encode())}
    check.check_secrets(leaks, [secret], findings)
    assert len(findings.violations["no secret in output"]) == 2


def _entries(the_state: dict) -> list[dict]:
    return [*the_state["bookmarks"]["contacts"], *the_state["bookmarks"]["leads"]]


def test_the_same_seed_gives_the_same_input():
    first, second = soak.make_input(500, 3), soak.make_input(500, 3)
    assert first == second
    records = first[1]
    keyed = [record.key for record in records if record.key is not None]
    assert len(set(keyed)) < len(keyed)  # some keys repeat
    assert {record.design for record in records} == {"valid", "local", "rejected"}
    assert {record.stream for record in records} == {
        "accounts",
        "contacts",
        "crm_accounts",
        "crm_contacts",
        "crm_leads",
    }


@pytest.mark.parametrize("seed", [11, 12])
def test_a_bounded_soak_with_kills_and_resumes_finds_no_violation(tmp_path, seed):
    out = tmp_path / "soak.json"
    command = [sys.executable, str(REPO / "bench" / "soak.py"), "--records", "2000", "--kills", "2"]
    process = subprocess.run(
        [*command, "--seeds", str(seed), "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    (result,) = json.loads(out.read_text())
    assert result["violations"] == {}, process.stderr[-3000:]
    assert process.returncode == 0
    assert result["kills"] == 2
    assert result["runs"] >= 4  # two killed, one to the end with chaos, one with chaos off
    assert sum(result["faults"].values()) > 20  # about one request in six, of some 150
    assert result["counts"]["entries"] == 2000
    assert result["counts"]["successes verified"] > 1800
    assert result["held_but_failed_after_clean_run"] == 0
    assert "| violations" in process.stdout
