"""BatchSink and RecordSink through the target: what is sent, and what the state line says."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from singer_sdk.exceptions import (
    InvalidJSONSchema,
    MissingKeyPropertiesError,
    RecordsWithoutSchemaException,
)

from target_cbx1.target import TargetCBX1
from tests.conftest import (
    API,
    account,
    bulk_answer,
    cbx1_id,
    contact,
    fixture_json,
    make_config,
    posted,
    record,
    run_target,
    schema,
    stdin_of,
    upsert_answer,
)

BULK_ACCOUNTS = f"{API}/api/t/v1/targets/accounts/bulk"
BULK_CONTACTS = f"{API}/api/t/v1/targets/contacts/bulk"


def test_records_are_chunked_by_batch_size_in_input_order(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    messages = [schema("accounts"), *(account(n) for n in range(7))]

    run = run_target(make_config(batch_size=3, max_concurrency=1), messages, capsys)

    bodies = posted(api)
    assert [len(body) for body in bodies] == [3, 3, 1]
    assert [p["domain"] for body in bodies for p in body] == [f"company{n}.com" for n in range(7)]
    assert [e["lookupKey"] for e in run.state["bookmarks"]["accounts"]] == [
        f"company{n}.com" for n in range(7)
    ]


def test_shuffled_results_are_matched_by_lookup_key_not_position(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    messages = [schema("accounts"), *(account(n) for n in range(5))]

    entries = run_target(make_config(), messages, capsys).state["bookmarks"]["accounts"]

    for n, entry in enumerate(entries):
        assert entry["success"] is True
        assert entry["id"] == cbx1_id(f"company{n}.com")
        assert entry["externalId"] == f"001{n:05d}"


def test_recorded_bulk_answer_with_update_flag(api, capsys):
    api.post(BULK_ACCOUNTS, json=fixture_json("bulk_success.json"))
    messages = [
        schema("accounts"),
        account(1, "acme.com"),
        account(2, "globex.io"),
        account(3, "initech.com"),
    ]

    state = run_target(make_config(), messages, capsys).state

    ids = [e["id"] for e in state["bookmarks"]["accounts"]]
    assert ids == [
        "7bb72d89-6610-4956-a181-9883773c2ba6",
        "e1d2c3b4-0000-4aaa-8bbb-123456789abc",
        "0b6f8c2e-6c55-4f7e-9a53-2f4f3f0c1c11",
    ]
    assert state["summary"]["accounts"] == {"success": 2, "fail": 0, "existing": 0, "updated": 1}


def test_partial_failure_keeps_the_servers_reason_and_matches_keys_case_insensitively(api, capsys):
    api.post(BULK_ACCOUNTS, json=fixture_json("bulk_partial_failure.json"))
    messages = [schema("accounts"), account(1, "https://www.acme.com/"), account(2, "bad-domain.invalid")]

    state = run_target(make_config(), messages, capsys).state

    good, bad = state["bookmarks"]["accounts"]
    assert good["success"] is True
    assert good["id"] == "7bb72d89-6610-4956-a181-9883773c2ba6"
    assert bad["success"] is False
    assert bad["id"] is None
    assert "Invalid domain" in bad["error"]
    assert state["summary"]["accounts"] == {"success": 1, "fail": 1, "existing": 0, "updated": 0}


def test_a_record_without_a_result_fails_instead_of_passing_silently(api, capsys):
    api.post(BULK_ACCOUNTS, json=fixture_json("bulk_missing_results.json"))
    messages = [schema("accounts"), account(1, "acme.com"), account(2, "globex.io")]

    acme, globex = run_target(make_config(), messages, capsys).state["bookmarks"]["accounts"]

    assert acme["success"] is True
    assert globex["success"] is False
    assert "no result returned for lookupKey 'globex.io'" in globex["error"]


def test_lookup_keys_are_normalised_and_the_normalised_value_is_sent(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    api.post(BULK_CONTACTS, json=bulk_answer())
    messages = [
        schema("accounts"),
        schema("contacts"),
        account(1, " HTTPS://WWW.Acme.COM/about?x=1 "),
        contact(1, "  Ann.Lee@Acme.COM "),
    ]

    state = run_target(make_config(), messages, capsys).state

    sent_domains = [p["domain"] for body in posted(api) for p in body if "domain" in p]
    assert sent_domains == ["acme.com"]
    sent_emails = [p["email"] for body in posted(api) for p in body if "email" in p]
    assert sent_emails == ["ann.lee@acme.com"]
    assert state["bookmarks"]["accounts"][0]["lookupKey"] == "acme.com"
    assert state["bookmarks"]["contacts"][0]["lookupKey"] == "ann.lee@acme.com"


def test_records_without_a_usable_lookup_key_are_not_sent_and_fail_with_the_field_named(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    api.post(BULK_CONTACTS, json=bulk_answer())
    messages = [
        schema("accounts"),
        schema("contacts"),
        account(1, ""),
        account(2, "not a domain"),
        account(3, "acme.com"),
        contact(1, None),
        record("contacts", crmAssociationId="0030", firstName="No email key"),
        contact(3, "dana@initech"),
    ]
    messages[5]["record"]["email"] = None

    state = run_target(make_config(), messages, capsys).state

    sent = [p.get("domain") or p.get("email") for body in posted(api) for p in body]
    assert sent == ["acme.com"]
    missing_domain, bad_domain, _ = state["bookmarks"]["accounts"]
    assert missing_domain["error"].startswith("domain is required")
    assert missing_domain["lookupKey"] is None
    assert "invalid domain 'not a domain'" in bad_domain["error"]
    errors = [e["error"] for e in state["bookmarks"]["contacts"]]
    assert errors[0].startswith("email is required")
    assert errors[1].startswith("email is required")
    assert "invalid email 'dana@initech'" in errors[2]
    assert state["summary"]["contacts"] == {"success": 0, "fail": 3, "existing": 0, "updated": 0}


def test_identical_records_are_sent_once_and_counted_existing(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    messages = [schema("accounts"), account(1), account(2), account(1)]

    state = run_target(make_config(), messages, capsys).state

    assert [p["domain"] for body in posted(api) for p in body] == ["company1.com", "company2.com"]
    first, _, repeat = state["bookmarks"]["accounts"]
    assert repeat["hash"] == first["hash"]
    assert repeat["success"] is True
    assert repeat["id"] == first["id"] == cbx1_id("company1.com")
    assert state["summary"]["accounts"] == {"success": 2, "fail": 0, "existing": 1, "updated": 0}


def test_two_records_with_the_same_lookup_key_never_share_a_request(api, capsys):
    api.post(BULK_CONTACTS, json=bulk_answer())
    messages = [
        schema("contacts"),
        contact(1, "ann@acme.com", title="CTO"),
        contact(2),
        contact(3, "ANN@acme.com", title="CEO"),
        contact(4),
    ]

    state = run_target(make_config(), messages, capsys).state

    bodies = posted(api)
    for body in bodies:
        keys = [p["email"] for p in body]
        assert len(keys) == len(set(keys))
    titles_in_order = [p.get("title") for body in bodies for p in body if p["email"] == "ann@acme.com"]
    assert titles_in_order == ["CTO", "CEO"]
    entries = state["bookmarks"]["contacts"]
    assert len(entries) == 4
    assert all(e["success"] for e in entries)
    assert state["summary"]["contacts"]["success"] == 4


def test_payloads_are_sent_as_received_minus_sdc_columns(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    line = (
        '{"type": "RECORD", "stream": "accounts", "record": {"domain": "acme.com", "annualRevenue": '
        '4200000.10, "createdAt": "2024-03-01T09:30:00Z", "_sdc_extracted_at": "2024-03-01T10:00:00Z", '
        '"custom": {"tier": 1}}}'
    )

    run_target(make_config(), [schema("accounts"), line], capsys)

    raw_body = next(r.text for r in api.request_history if r.method == "POST")
    assert '"annualRevenue":4200000.10' in raw_body
    assert '"createdAt":"2024-03-01T09:30:00Z"' in raw_body
    assert "_sdc_" not in raw_body
    assert json.loads(raw_body) == [
        {
            "domain": "acme.com",
            "annualRevenue": 4200000.10,
            "createdAt": "2024-03-01T09:30:00Z",
            "custom": {"tier": 1},
        }
    ]


def test_record_preparation_options(api, capsys, monkeypatch):
    monkeypatch.setenv("JOB_ROOT", "job_42")
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    config = make_config(
        batch_size=2,
        add_stream_key=True,
        metadata='{"source": "hubspot", "sync": "nightly"}',
        inject_batch_ids=True,
    )
    messages = [schema("accounts"), account(1, metadata={"owner": "ann"}), account(2), account(3)]

    state = run_target(config, messages, capsys).state

    first_chunk, second_chunk = posted(api)
    expected_ids = [hashlib.md5(f"job_42:accounts:{i}".encode()).hexdigest() for i in (1, 2)]
    assert first_chunk[0]["stream"] == "accounts"
    assert first_chunk[0]["metadata"] == {"owner": "ann", "source": "hubspot", "sync": "nightly"}
    assert first_chunk[1]["metadata"] == {"source": "hubspot", "sync": "nightly"}
    expected = [expected_ids[0], expected_ids[0], expected_ids[1]]
    assert [p["hgBatchId"] for p in first_chunk + second_chunk] == expected
    assert [e["hgBatchId"] for e in state["bookmarks"]["accounts"]] == expected


def test_no_batch_ids_unless_asked(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())

    state = run_target(make_config(), [schema("accounts"), account(1)], capsys).state

    assert "hgBatchId" not in posted(api)[0][0]
    assert "hgBatchId" not in state["bookmarks"]["accounts"][0]


def test_mapped_record_is_reported_when_hotglue_asks(api, capsys, monkeypatch):
    monkeypatch.setenv("OUTPUT_MAPPED_RECORD", "true")
    api.post(BULK_ACCOUNTS, json=bulk_answer())

    state = run_target(make_config(), [schema("accounts"), account(1, "WWW.Acme.com")], capsys).state

    assert state["bookmarks"]["accounts"][0]["mapped_record"] == posted(api)[0][0]
    assert state["bookmarks"]["accounts"][0]["mapped_record"]["domain"] == "acme.com"


def test_record_mode_sends_one_upsert_per_record_with_data_id(api, capsys):
    upsert = f"{API}/api/t/v1/targets/contacts/upsert"
    api.post(upsert, json=upsert_answer)
    messages = [schema("contacts"), contact(1), contact(2), contact(3, "")]

    state = run_target(make_config(process_as_batch=False, max_concurrency=1), messages, capsys).state

    bodies = posted(api, "/upsert")
    assert [b["email"] for b in bodies] == ["person1@example.com", "person2@example.com"]
    assert not posted(api, "/bulk")
    entries = state["bookmarks"]["contacts"]
    assert [e["id"] for e in entries[:2]] == [cbx1_id("person1@example.com"), cbx1_id("person2@example.com")]
    assert entries[2]["success"] is False
    assert state["summary"]["contacts"] == {"success": 2, "fail": 1, "existing": 0, "updated": 0}


def test_record_mode_rejection_carries_the_servers_message(api, capsys):
    upsert = f"{API}/api/t/v1/targets/contacts/upsert"
    api.post(upsert, status_code=400, json=fixture_json("upsert_rejected.json"))

    state = run_target(make_config(process_as_batch=False), [schema("contacts"), contact(1)], capsys).state

    entry = state["bookmarks"]["contacts"][0]
    assert entry["success"] is False
    assert "HTTP 400" in entry["error"]
    assert "email must be a valid address" in entry["error"]
    assert len(api.request_history) == 2  # token + one upsert: a 400 is not retried


def test_recorded_upsert_success(api, capsys):
    api.post(f"{API}/api/t/v1/targets/contacts/upsert", json=fixture_json("upsert_success.json"))

    state = run_target(make_config(process_as_batch=False), [schema("contacts"), contact(1)], capsys).state

    assert state["bookmarks"]["contacts"][0]["id"] == "5e1a9c3d-7f2b-4c8e-9d0a-1b2c3d4e5f60"


def test_lookup_fields_override_and_key_property_fallback(api, capsys):
    api.post(f"{API}/api/t/v1/targets/leads/bulk", json=bulk_answer(field="work_email"))
    api.post(f"{API}/api/t/v1/targets/vendors/bulk", json=bulk_answer(field="vendor_code"))
    messages = [
        schema("leads", {"work_email": {"type": "string"}}),
        schema("vendors", {"vendor_code": {"type": "string"}}, key_properties=["vendor_code"]),
        record("leads", work_email="Lee@Vendor.io"),
        record("vendors", vendor_code=" V-0042 "),
    ]

    state = run_target(make_config(lookup_fields={"leads": "work_email"}), messages, capsys).state

    assert state["bookmarks"]["leads"][0]["lookupKey"] == "lee@vendor.io"
    assert state["bookmarks"]["vendors"][0]["lookupKey"] == "V-0042"
    assert [p["vendor_code"] for body in posted(api) for p in body if "vendor_code" in p] == ["V-0042"]
    assert all(e["success"] for s in state["bookmarks"].values() for e in s)


def test_stream_without_lookup_field_fails_its_records_and_others_go_on(api, capsys, caplog):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    messages = [
        schema("deals", {"amount": {"type": "number"}}),
        schema("accounts"),
        record("deals", amount=10),
        account(1),
        record("deals", amount=20),
    ]

    state = run_target(make_config(), messages, capsys).state

    deals = state["bookmarks"]["deals"]
    assert len(deals) == 2
    for entry in deals:
        assert entry["success"] is False
        assert "'deals'" in entry["error"]
        assert "lookup_fields" in entry["error"]
    assert state["bookmarks"]["accounts"][0]["success"] is True
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "deals" in r.getMessage()]
    assert len(errors) == 1
    assert not [r for r in api.request_history if "deals" in r.path]


def test_record_that_breaks_its_schema_fails_alone(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    messages = [schema("accounts"), account(1, annualRevenue="lots"), account(2)]

    state = run_target(make_config(), messages, capsys).state

    bad, good = state["bookmarks"]["accounts"]
    assert bad["success"] is False
    assert "schema" in bad["error"]
    assert "lots" in bad["error"]
    assert good["success"] is True
    assert [p["domain"] for body in posted(api) for p in body] == ["company2.com"]


def test_tap_state_is_not_forwarded_in_hotglue_mode(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    messages = [schema("accounts"), account(1), {"type": "STATE", "value": {"bookmarks": {"x": 1}}}]

    run = run_target(make_config(), messages, capsys)

    assert run.stdout.count("\n") == 1
    assert set(run.state) == {"bookmarks", "summary"}


def test_every_stream_with_a_schema_appears_in_the_summary(api, capsys):
    state = run_target(make_config(), [schema("accounts"), schema("contacts")], capsys).state

    assert state == {
        "bookmarks": {"accounts": [], "contacts": []},
        "summary": {
            "accounts": {"success": 0, "fail": 0, "existing": 0, "updated": 0},
            "contacts": {"success": 0, "fail": 0, "existing": 0, "updated": 0},
        },
    }


def test_records_queued_before_a_schema_change_are_sent_first(api, capsys):
    api.post(BULK_ACCOUNTS, json=bulk_answer())
    changed = schema("accounts")
    changed["schema"] = {**changed["schema"], "properties": {**changed["schema"]["properties"], "x": {}}}
    messages = [schema("accounts"), account(1, "acme.com"), changed, account(2, "acme.com", name="Renamed")]

    state = run_target(make_config(), messages, capsys).state

    names = [p["name"] for body in posted(api) for p in body]
    assert names == ["Company 1", "Renamed"]
    assert len(state["bookmarks"]["accounts"]) == 2


def test_request_threads_end_with_their_sink_however_often_the_schema_changes(api, capsys):
    earlier = set(threading.enumerate())  # other tests' stopped runs may leave threads behind

    def request_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("cbx1-accounts") and t not in earlier]

    peak: list[int] = []

    def answer(request, context):
        peak.append(len(request_threads()))
        return bulk_answer()(request, context)

    api.post(BULK_ACCOUNTS, json=answer)
    messages: list[dict | str] = []
    for version in range(30):
        changed = schema("accounts")
        properties = {**changed["schema"]["properties"], f"field{version}": {"type": ["string", "null"]}}
        changed["schema"] = {**changed["schema"], "properties": properties}
        messages += [changed, *(account(version * 10 + n) for n in range(3))]

    state = run_target(make_config(max_concurrency=4), messages, capsys).state

    assert state["summary"]["accounts"]["success"] == 90
    assert max(peak) <= 4
    assert request_threads() == []


@pytest.mark.parametrize("stream", ["Account", "companies", "hubspot_companies"])
def test_account_like_stream_names_use_domain(api, capsys, stream):
    api.post(f"{API}/api/t/v1/targets/{stream}/bulk", json=bulk_answer())
    messages = [schema(stream, {"domain": {"type": "string"}}), record(stream, domain="Acme.com")]

    state = run_target(make_config(), messages, capsys).state

    assert state["bookmarks"][stream][0]["lookupKey"] == "acme.com"


def test_changed_key_properties_change_the_lookup_field(api, capsys):
    api.post(
        f"{API}/api/t/v1/targets/example_stream/bulk",
        [{"json": bulk_answer(field="id")}, {"json": bulk_answer(field="email")}],
    )
    properties = {"id": {"type": "integer"}, "email": {"type": "string"}}
    messages = [
        schema("example_stream", properties, key_properties=["id"]),
        record("example_stream", id=1, email="alice@example.com"),
        schema("example_stream", properties, key_properties=["email"]),
        record("example_stream", id=2, email="Bob@Example.com"),
    ]

    state = run_target(make_config(), messages, capsys).state

    entries = state["bookmarks"]["example_stream"]
    assert [e["lookupKey"] for e in entries] == ["1", "bob@example.com"]
    assert [e["id"] for e in entries] == [cbx1_id("1"), cbx1_id("bob@example.com")]
    assert posted(api) == [[{"id": 1, "email": "alice@example.com"}], [{"id": 2, "email": "bob@example.com"}]]


def test_missing_lookup_field_is_logged_once_per_stream_across_key_changes(api, capsys, caplog):
    properties = {"a": {"type": "string"}, "b": {"type": "string"}}
    messages = [
        schema("deals", properties),
        record("deals", a="x", b="y"),
        schema("deals", properties, key_properties=["a", "b"]),
        record("deals", a="z", b="w"),
    ]

    state = run_target(make_config(), messages, capsys).state

    assert [e["success"] for e in state["bookmarks"]["deals"]] == [False, False]
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "'deals'" in r.getMessage()]
    assert len(errors) == 1


def test_record_before_its_schema_stops_the_run_naming_the_stream(api):
    with pytest.raises(
        RecordsWithoutSchemaException, match=r"stream 'accounts'.*before a corresponding schema"
    ):
        TargetCBX1(config=make_config()).listen(stdin_of([account(1), schema("accounts")]))
    assert posted(api) == []


def test_record_missing_a_key_property_stops_the_run_naming_stream_and_key(api):
    properties = {"id": {"type": "integer"}, "metric": {"type": "integer"}}
    messages = [schema("metrics", properties, key_properties=["id"]), record("metrics", metric=3)]

    with pytest.raises(
        MissingKeyPropertiesError, match=r"stream 'metrics' is missing the key properties \['id'\]"
    ):
        TargetCBX1(config=make_config()).listen(stdin_of(messages))
    assert posted(api) == []


@pytest.mark.parametrize("bad_schema", [{"type": "object"}, "not an object"])
def test_schema_without_properties_stops_the_run_naming_the_stream(api, bad_schema):
    message = {"type": "SCHEMA", "stream": "accounts", "schema": bad_schema, "key_properties": []}

    with pytest.raises(InvalidJSONSchema, match="SCHEMA message for stream 'accounts' has no 'properties'"):
        TargetCBX1(config=make_config()).listen(stdin_of([message]))


def test_an_international_domain_matches_cbx1s_punycode_answer(api, capsys):
    answer = {
        "status": {"code": "CM000"},
        "data": {"results": [{"success": True, "id": "id-m", "lookupKey": "xn--mnchen-3ya.de"}]},
    }
    api.post(BULK_ACCOUNTS, json=answer)

    state = run_target(
        make_config(), [schema("accounts"), account(1, "https://www.München.de/")], capsys
    ).state

    (entry,) = state["bookmarks"]["accounts"]
    assert (entry["success"], entry["id"], entry["lookupKey"]) == (True, "id-m", "xn--mnchen-3ya.de")
    assert posted(api)[0][0]["domain"] == "münchen.de"
