"""Real-shaped ETL envelope output through the real command into the sandbox's records endpoint."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from target_cbx1.sandbox import Sandbox
from tests.conftest import ACCESS_KEY, ENVELOPE_SCHEMA, ORG_ID, lines_of, sandbox_config
from tests.test_end_to_end import assert_no_secrets, run_command

EXAMPLES = Path(__file__).parent.parent / "examples" / "envelopes"
OBJECT_TYPES = {"Account": "ACCOUNT", "Contact": "CONTACT", "Lead": "CONTACT", "accounts": "ACCOUNT"}


def salesforce_export(accounts: int = 300, contacts: int = 150, leads: int = 50) -> list[dict]:
    """Salesforce-shaped envelopes: some accounts repeat a domain with the same data (a duplicate account,
    SKIPPED by CBX1) or with new data (the later write wins); every 50th account has a bad domain.
    """
    messages: list[dict] = [
        {"type": "SCHEMA", "stream": stream, "schema": ENVELOPE_SCHEMA, "key_properties": []}
        for stream in ("Account", "Contact", "Lead")
    ]

    def record(stream: str, number: int, key: str, data: dict) -> dict:
        prefix = {"Account": "001", "Contact": "003", "Lead": "00Q"}[stream]
        envelope = {"data": data, "sourceRecordId": f"{prefix}5g0000{number:08d}", "source": "SALESFORCE"}
        return {"type": "RECORD", "stream": stream, "record": {**envelope, "lookupKey": key}}

    for number in range(accounts):
        company = number if number % 10 else number // 2  # every 10th repeats an earlier company
        key = f"Company{company}.example.com" if number % 50 != 49 else f"not a domain {number}"
        data = {"name": f"Company {company}", "domain": key, "employeeCount": 10 + company}
        if number % 30 == 0 and number:
            data = {**data, "employeeCount": 999}  # the same company, updated
        messages.append(record("Account", number, key, data))
    for number in range(contacts):
        email = f"person{number % 120}@company{number % 40}.example.com"
        messages.append(record("Contact", number, email, {"email": email, "firstName": f"P{number}"}))
    for number in range(leads):
        email = f"lead{number}@prospect{number}.example.com"
        messages.append(record("Lead", number, email, {"email": email, "leadScore": number}))
    return messages


def expected_outcomes(messages: list[dict]) -> dict[str, list[str]]:
    """What CBX1 should answer per record, by the sandbox's rules: existing when the same data is
    already stored under the key, failed for a bad domain, else success.
    """
    stored: dict[tuple[str, str], t.Any] = {}
    outcomes: dict[str, list[str]] = {}
    for message in messages:
        if message["type"] != "RECORD":
            continue
        record, stream = message["record"], message["stream"]
        key = (OBJECT_TYPES[stream], record["lookupKey"].lower())
        if record["lookupKey"].startswith("not a domain"):
            outcome = "fail"
        elif stored.get(key) == record["data"]:
            outcome = "existing"
        else:
            stored[key] = record["data"]
            outcome = "success"
        outcomes.setdefault(stream, []).append(outcome)
    return outcomes


def assert_landed(state: dict, messages: list[dict], sandbox: Sandbox) -> None:
    """One entry per record in input order, each id the sandbox's, each externalId the sourceRecordId."""
    expected = expected_outcomes(messages)
    for stream, outcomes in expected.items():
        sent = [m["record"] for m in messages if m["type"] == "RECORD" and m["stream"] == stream]
        entries = state["bookmarks"][stream]
        assert [e["externalId"] for e in entries] == [r.get("sourceRecordId") for r in sent]
        entities = sandbox.entities(OBJECT_TYPES[stream])
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome == "fail":
                assert entry["success"] is False, entry
                assert entry["error"].startswith("CBX1 rejected the record: Invalid domain"), entry
            else:
                assert entry["success"] is True, entry
                assert entry["id"] == entities[entry["lookupKey"]].id, entry
        summary = state["summary"][stream]
        assert summary["existing"] == outcomes.count("existing")
        assert summary["fail"] == outcomes.count("fail")
        assert summary["success"] == outcomes.count("success")


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "record"])
def test_salesforce_export_lands_completely_with_ids_external_ids_and_order(sandbox, tmp_path, batch):
    messages = salesforce_export()

    result = run_command(sandbox_config(sandbox, process_as_batch=batch), tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    assert_landed(result.state, messages, sandbox)
    accounts = sandbox.entities("ACCOUNT")
    assert accounts["company30.example.com"].data["employeeCount"] == 999  # the later write won
    assert_no_secrets(result, sandbox)


def test_every_example_export_lands(sandbox, tmp_path):
    outcomes: dict[str, dict[str, dict[str, int]]] = {}
    for source in ("hubspot", "salesforce", "marketo"):
        stdin = (EXAMPLES / f"{source}.singer").read_text()
        result = run_command(sandbox_config(sandbox), tmp_path, stdin, env={"CONNECTOR_ID": source})
        assert result.returncode == 0, result.stderr
        outcomes[source] = result.state["summary"]
        for entries in result.state["bookmarks"].values():
            assert all(entry["success"] or entry["error"] for entry in entries)

    assert outcomes["hubspot"]["accounts"] == {"success": 4, "fail": 2, "existing": 0, "updated": 0}
    assert outcomes["hubspot"]["contacts"] == {"success": 5, "fail": 0, "existing": 1, "updated": 0}
    assert outcomes["salesforce"]["Account"]["existing"] == 1
    assert outcomes["salesforce"]["Contact"]["fail"] == 1
    assert outcomes["marketo"]["leads"] == {"success": 7, "fail": 0, "existing": 0, "updated": 0}
    paths = {(exchange.source, exchange.stream) for exchange in sandbox.exchanges}
    assert paths == {
        ("HUBSPOT", "ACCOUNT"),
        ("HUBSPOT", "CONTACT"),
        ("SALESFORCE", "ACCOUNT"),
        ("SALESFORCE", "CONTACT"),
        ("MARKETO", "CONTACT"),
    }


def test_no_source_anywhere_fails_every_envelope_and_sends_nothing(sandbox, tmp_path):
    stdin = (EXAMPLES / "hubspot.singer").read_text()

    result = run_command(sandbox_config(sandbox), tmp_path, stdin)

    assert result.returncode == 0, result.stderr
    for entries in result.state["bookmarks"].values():
        for entry in entries:
            assert entry["success"] is False
    assert sandbox.exchanges == []
    assert "CONNECTOR_ID" in json.dumps(result.state)


def test_faults_on_the_records_endpoint_cost_only_the_records_they_hit(sandbox, tmp_path):
    messages = salesforce_export(accounts=40, contacts=0, leads=0)
    for fault in ("502", "401", "reject=company7.example.com", "omit=1"):
        sandbox.add_fault(fault)

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    entries = result.state["bookmarks"]["Account"]
    failures = {entry["lookupKey"]: entry["error"] for entry in entries if not entry["success"]}
    assert "Validation failed for record" in failures.pop("company7.example.com")
    no_result = [key for key, error in failures.items() if error.startswith("no result returned")]
    assert len(no_result) == 1
    assert set(failures) == set(no_result)
    entities = sandbox.entities("ACCOUNT")
    assert all(entry["id"] == entities[entry["lookupKey"]].id for entry in entries if entry["success"])


def test_a_rerun_of_the_job_resends_only_the_envelopes_that_failed(sandbox, tmp_path):
    messages = salesforce_export(accounts=30, contacts=10, leads=0)
    config = sandbox_config(sandbox, incremental_state_path=str(tmp_path / "incremental.json"))
    sandbox.add_fault("reject=company3.example.com")
    first = run_command(config, tmp_path, lines_of(messages))
    failed = {e["lookupKey"] for e in first.state["bookmarks"]["Account"] if not e["success"]}
    assert failed == {"company3.example.com"}
    sent_before = len(sandbox.exchanges)
    sandbox.faults.faults.clear()

    second = run_command(config, tmp_path, lines_of(messages))

    assert second.returncode == 0, second.stderr
    resent = [key for exchange in sandbox.exchanges[sent_before:] for key in exchange.lookup_keys]
    assert resent == ["company3.example.com"]
    assert all(entry["success"] for entry in second.state["bookmarks"]["Account"])
    assert len(second.state["bookmarks"]["Account"]) == 30


def test_singer_mode_forwards_the_taps_state_once_its_envelopes_are_written(sandbox, tmp_path):
    messages = salesforce_export(accounts=30, contacts=0, leads=0)
    bookmark = {"type": "STATE", "value": {"bookmarks": {"Account": {"SystemModstamp": "2026-11-30"}}}}
    config = sandbox_config(
        sandbox, state_output="singer", results_path=str(tmp_path / "results.json"), process_as_batch=False
    )

    result = run_command(config, tmp_path, lines_of([*messages, bookmark]))

    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [bookmark["value"]]
    results = json.loads((tmp_path / "results.json").read_text())
    assert_landed(results, messages, sandbox)


SHARED_EMAIL = "ann@acme.example.com"


def contacts_and_leads(*records: tuple[str, str, int]) -> list[dict]:
    """Envelope streams contacts and leads (both CBX1 contacts), then (stream, email, version) records."""
    messages = [
        {"type": "SCHEMA", "stream": stream, "schema": ENVELOPE_SCHEMA, "key_properties": []}
        for stream in ("contacts", "leads")
    ]
    return messages + [
        {
            "type": "RECORD",
            "stream": stream,
            "record": {"data": {"v": version}, "source": "MARKETO", "lookupKey": email},
        }
        for stream, email, version in records
    ]


def test_contacts_and_leads_never_have_one_email_in_flight_at_once(tmp_path):
    messages = contacts_and_leads(("contacts", SHARED_EMAIL, 1), ("leads", SHARED_EMAIL, 2))
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, latency_ms=300) as sandbox:
        result = run_command(sandbox_config(sandbox), tmp_path, lines_of(messages))

        assert result.returncode == 0, result.stderr
        first, second = sorted(sandbox.exchanges, key=lambda exchange: exchange.received_at)
        assert first.answered_at is not None
        assert second.received_at >= first.answered_at
        assert sandbox.entities("CONTACT")[SHARED_EMAIL].data == {"v": 2}  # the later record, written last


def test_a_key_queued_in_one_stream_is_sent_before_a_later_record_of_it_in_another(tmp_path):
    """leads fills its chunk first, with a later record of an email contacts still holds queued: the
    contacts queue goes first, so CBX1 ends with the later record (found by the chaos soak)."""
    messages = contacts_and_leads(
        ("contacts", SHARED_EMAIL, 1), ("leads", "bob@acme.example.com", 2), ("leads", SHARED_EMAIL, 3)
    )
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID) as sandbox:
        result = run_command(sandbox_config(sandbox, batch_size=2), tmp_path, lines_of(messages))

        assert result.returncode == 0, result.stderr
        exchanges = sorted(sandbox.exchanges, key=lambda exchange: exchange.received_at)
        carrying = [exchange for exchange in exchanges if SHARED_EMAIL in exchange.lookup_keys]
        assert [len(exchange.lookup_keys) for exchange in carrying] == [1, 2]  # contacts' first, then leads'
        assert sandbox.entities("CONTACT")[SHARED_EMAIL].data == {"v": 3}
        assert [entry["success"] for entry in result.entries("leads")] == [True, True]
