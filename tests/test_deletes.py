"""Deletions (`_sdc_deleted_at`) and ACTIVATE_VERSION: CBX1 has no delete, so neither reaches it."""

from __future__ import annotations

import json

import pytest

from target_cbx1.records import deletion_of
from tests.conftest import account, contact, envelope, envelope_schema, lines_of, sandbox_config, schema
from tests.test_end_to_end import run_command

DELETED_AT = "2026-11-20T08:00:00Z"
DELETION = f"the record is a deletion (_sdc_deleted_at {DELETED_AT}); CBX1 has no delete, so it was not sent"


def activate_version(stream: str, version: int = 1700000000) -> dict:
    return {"type": "ACTIVATE_VERSION", "stream": stream, "version": version}


def sent_keys(sandbox) -> set[str | None]:
    return {key for exchange in sandbox.exchanges for key in exchange.lookup_keys}


@pytest.mark.parametrize("process_as_batch", [True, False])
def test_a_deleted_flat_record_is_not_sent_and_fails_with_the_reason(sandbox, tmp_path, process_as_batch):
    messages = [
        schema("accounts"),
        account(1, _sdc_deleted_at=DELETED_AT),
        account(2, _sdc_deleted_at=None),
        account(3, _sdc_deleted_at=""),
        account(4, _sdc_deleted_at="2026-11-21T09:30:00Z"),
        account(5),
    ]
    config = sandbox_config(sandbox, process_as_batch=process_as_batch)

    result = run_command(config, tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    entries = result.entries("accounts")
    assert [e["success"] for e in entries] == [False, True, True, False, True]
    assert entries[0] == {
        "hash": entries[0]["hash"],
        "success": False,
        "id": None,
        "externalId": "00100001",
        "lookupKey": "company1.com",
        "error": DELETION,
    }
    assert "(_sdc_deleted_at 2026-11-21T09:30:00Z)" in entries[3]["error"]
    assert result.state["summary"]["accounts"] == {"success": 3, "fail": 2, "existing": 0, "updated": 0}
    assert set(sandbox.records("accounts")) == {"company2.com", "company3.com", "company5.com"}
    assert not {"company1.com", "company4.com"} & sent_keys(sandbox)
    assert "_sdc_deleted_at" not in sandbox.records("accounts")["company2.com"].record
    assert result.stderr.count("records marked deleted (_sdc_deleted_at set) are not sent") == 1


def test_deleted_envelopes_are_not_sent_whether_marked_at_the_top_or_in_data(sandbox, tmp_path):
    messages = [
        envelope_schema("contacts"),
        envelope("contacts", "ann@acme.com", sourceRecordId="003A", _sdc_deleted_at=DELETED_AT),
        envelope("contacts", "bob@acme.com", {"email": "bob@acme.com", "_sdc_deleted_at": DELETED_AT}),
        envelope("contacts", "cy@acme.com", {"email": "cy@acme.com", "_sdc_deleted_at": None}),
        envelope("contacts", "dee@acme.com", sourceRecordId="003D"),
    ]

    result = run_command(sandbox_config(sandbox, source="HUBSPOT"), tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    entries = result.entries("contacts")
    assert [(e["lookupKey"], e["success"]) for e in entries] == [
        ("ann@acme.com", False),
        ("bob@acme.com", False),
        ("cy@acme.com", True),
        ("dee@acme.com", True),
    ]
    assert entries[0]["error"] == DELETION
    assert entries[0]["externalId"] == "003A"
    assert entries[1]["error"] == DELETION.replace("(_sdc", "(data._sdc")
    assert result.state["summary"]["contacts"] == {"success": 2, "fail": 2, "existing": 0, "updated": 0}
    assert set(sandbox.entities("CONTACT")) == {"cy@acme.com", "dee@acme.com"}
    assert not {"ann@acme.com", "bob@acme.com"} & sent_keys(sandbox)


def test_a_deleted_flat_record_wrapped_for_the_records_endpoint_is_not_sent(sandbox, tmp_path):
    messages = [schema("contacts"), contact(1, _sdc_deleted_at=DELETED_AT), contact(2)]
    config = sandbox_config(sandbox, api="records", source="SALESFORCE")

    result = run_command(config, tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    assert [e.get("error") for e in result.entries("contacts")] == [DELETION, None]
    assert set(sandbox.entities("CONTACT")) == {"person2@example.com"}


def test_a_stream_map_that_drops_the_deletion_column_sends_the_record_as_live(sandbox, tmp_path):
    config = sandbox_config(sandbox, stream_maps={"accounts": {"_sdc_deleted_at": None}})

    result = run_command(
        config, tmp_path, lines_of([schema("accounts"), account(1, _sdc_deleted_at=DELETED_AT)])
    )

    assert result.returncode == 0, result.stderr
    assert [e["success"] for e in result.entries("accounts")] == [True]
    assert set(sandbox.records("accounts")) == {"company1.com"}


def test_in_singer_state_mode_a_deletion_fails_in_the_results_and_the_tap_state_goes_on(sandbox, tmp_path):
    results = tmp_path / "results.json"
    tap_state = {"type": "STATE", "value": {"bookmarks": {"accounts": {"updatedAt": 2}}}}
    messages = [schema("accounts"), account(1, _sdc_deleted_at=DELETED_AT), account(2), tap_state]
    config = sandbox_config(sandbox, state_output="singer", results_path=str(results))

    result = run_command(config, tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [tap_state["value"]]
    entries = json.loads(results.read_text())["bookmarks"]["accounts"]
    assert [e.get("error") for e in entries] == [DELETION, None]


@pytest.mark.parametrize(
    ("value", "deleted"),
    [
        (DELETED_AT, True),
        (1732089600, True),
        (True, True),
        (None, False),
        ("", False),
        ("  ", False),
        (False, False),
    ],
)
def test_a_record_is_a_deletion_when_its_deleted_at_says_something(value, deleted):
    assert (deletion_of({"domain": "acme.com", "_sdc_deleted_at": value}) is not None) is deleted
    assert deletion_of({"data": {"_sdc_deleted_at": value}}) is None  # only envelopes look in data
    assert (deletion_of({"data": {"_sdc_deleted_at": value}}, in_data=True) is not None) is deleted


def test_activate_version_is_accepted_logged_once_per_stream_and_sends_nothing(sandbox, tmp_path):
    messages = [
        activate_version("accounts"),
        schema("accounts"),
        activate_version("accounts"),
        account(1),
        schema("contacts"),
        activate_version("contacts", 42),
        contact(1),
        activate_version("accounts", 1700000001),
        activate_version("contacts", 43),
    ]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of(messages))

    assert result.returncode == 0, result.stderr
    assert [e["success"] for e in result.entries("accounts") + result.entries("contacts")] == [True, True]
    assert sorted(e.lookup_keys for e in sandbox.exchanges) == [("company1.com",), ("person1@example.com",)]
    logged = [line for line in result.stderr.splitlines() if "ACTIVATE_VERSION (full-table version" in line]
    assert len(logged) == 2
    assert "INFO" in logged[0]
    assert "Stream 'accounts': ACTIVATE_VERSION (full-table version 1700000000) is not applied" in logged[0]
    assert "Stream 'contacts': ACTIVATE_VERSION (full-table version 42) is not applied" in logged[1]
    assert "not implemented" not in result.stderr


@pytest.mark.parametrize(
    "message",
    [
        {"type": "ACTIVATE_VERSION", "version": 1},
        {"type": "ACTIVATE_VERSION", "stream": "accounts"},
        {"type": "ACTIVATE_VERSION", "stream": "accounts", "version": None},
        {"type": "ACTIVATE_VERSION", "stream": 7, "version": 1},
        {"type": "ACTIVATE_VERSION", "stream": "", "version": 1},
    ],
)
def test_a_malformed_activate_version_stops_the_run_as_bad_input(sandbox, tmp_path, message):
    messages = [schema("accounts"), account(1), message, account(2)]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of(messages))

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert "line 3: an ACTIVATE_VERSION message needs a stream name and a version" in errors[0]
    assert "Traceback" not in result.stderr
    assert [e["lookupKey"] for e in result.entries("accounts")] == ["company1.com"]  # read before it: sent
    assert set(sandbox.records("accounts")) == {"company1.com"}
