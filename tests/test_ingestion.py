"""The unified ingestion contract over HTTP: envelopes to /integrations/{SOURCE}/{OBJECT_TYPE}/records."""

from __future__ import annotations

import json

import pytest
from singer_sdk.exceptions import ConfigValidationError

from target_cbx1.target import TargetCBX1
from tests.conftest import (
    API,
    account,
    bulk_answer,
    cbx1_id,
    contact,
    envelope,
    envelope_schema,
    fixture_json,
    make_config,
    posted,
    records_answer,
    run_target,
    schema,
    stdin_of,
    upsert_answer,
)


def records_url(source: str, object_type: str) -> str:
    return f"{API}/api/t/v1/targets/integrations/{source}/{object_type}/records"


HUBSPOT_ACCOUNTS = records_url("HUBSPOT", "ACCOUNT")
HUBSPOT_CONTACTS = records_url("HUBSPOT", "CONTACT")
SALESFORCE_ACCOUNTS = records_url("SALESFORCE", "ACCOUNT")


def data_requests(api) -> list:
    return [r for r in api.request_history if r.method == "POST"]


def entries(state: dict, stream: str) -> list[dict]:
    return state["bookmarks"][stream]


# Routing


def test_an_envelope_stream_goes_to_the_records_endpoint_and_a_flat_one_to_bulk(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    api.post(f"{API}/api/t/v1/targets/contacts/bulk", json=bulk_answer())
    messages = [
        envelope_schema("accounts"),
        envelope("accounts", "acme-robotics.com", source="HUBSPOT", sourceRecordId="18004672"),
        schema("contacts"),
        contact(1),
    ]

    state = run_target(make_config(), messages, capsys).state

    assert [r.url for r in data_requests(api)] == [HUBSPOT_ACCOUNTS, f"{API}/api/t/v1/targets/contacts/bulk"]
    assert entries(state, "accounts") == [
        {
            "hash": entries(state, "accounts")[0]["hash"],
            "success": True,
            "id": cbx1_id("acme-robotics.com"),
            "externalId": "18004672",
            "lookupKey": "acme-robotics.com",
        }
    ]
    assert entries(state, "contacts")[0]["id"] == cbx1_id("person1@example.com")


def test_the_body_carries_the_envelopes_with_lookup_keys_as_sent(api, capsys):
    api.post(SALESFORCE_ACCOUNTS, json=records_answer())
    data = {"name": "Globex", "domain": "Globex.COM", "annualRevenue": 12500000.5, "_sdc_batched_at": "x"}
    messages = [
        envelope_schema("accounts"),
        envelope("accounts", "Globex.COM", data, source="SALESFORCE", sourceRecordId="001gL00000J3bZcQAJ"),
    ]

    state = run_target(make_config(), messages, capsys).state

    assert posted(api, "/records") == [
        {
            "records": [
                {
                    "data": {"name": "Globex", "domain": "Globex.COM", "annualRevenue": 12500000.5},
                    "lookupKey": "Globex.COM",
                    "source": "SALESFORCE",
                    "sourceRecordId": "001gL00000J3bZcQAJ",
                }
            ]
        }
    ]
    assert entries(state, "accounts")[0]["lookupKey"] == "globex.com"
    assert entries(state, "accounts")[0]["success"] is True


@pytest.mark.parametrize(
    ("stream", "object_type"),
    [
        ("Account", "ACCOUNT"),
        ("companies", "ACCOUNT"),
        ("Contact", "CONTACT"),
        ("Lead", "CONTACT"),
        ("leads", "CONTACT"),
    ],
)
def test_object_type_follows_the_stream_name_in_any_case(api, capsys, stream, object_type):
    api.post(records_url("SALESFORCE", object_type), json=records_answer())
    messages = [envelope_schema(stream), envelope(stream, "ann@acme.com", source="SALESFORCE")]

    state = run_target(make_config(), messages, capsys).state

    assert [r.url for r in data_requests(api)] == [records_url("SALESFORCE", object_type)]
    assert entries(state, stream)[0]["success"] is True


def test_object_types_setting_names_the_type_of_other_streams(api, capsys):
    api.post(records_url("MARKETO", "CONTACT"), json=records_answer())
    messages = [envelope_schema("people"), envelope("people", "ann@acme.com", source="MARKETO")]

    state = run_target(make_config(object_types={"people": "CONTACT"}), messages, capsys).state

    assert entries(state, "people")[0]["id"] == cbx1_id("ann@acme.com")


def test_a_stream_without_object_type_fails_its_records_naming_object_types(api, capsys):
    messages = [envelope_schema("deals"), envelope("deals", "d-1", source="HUBSPOT")]

    state = run_target(make_config(), messages, capsys).state

    (entry,) = entries(state, "deals")
    assert entry["success"] is False
    assert "object_types" in entry["error"]
    assert data_requests(api) == []


def test_object_types_values_must_be_account_or_contact_in_any_case(api, capsys):
    with pytest.raises(ConfigValidationError) as caught:
        TargetCBX1(config=make_config(object_types={"people": "PERSON"}))
    assert caught.value.errors == [
        "object_types: must map each stream to ACCOUNT or CONTACT, not 'people': 'PERSON'"
    ]
    api.post(records_url("HUBSPOT", "ACCOUNT"), json=records_answer())
    messages = [envelope_schema("orgs"), envelope("orgs", "acme.com", source="HUBSPOT")]

    state = run_target(make_config(object_types={"orgs": "account"}), messages, capsys).state

    assert entries(state, "orgs")[0]["success"] is True


# Outcomes


def test_success_skipped_and_failed_become_state_entries_matched_by_lookup_key(api, capsys):
    api.post(SALESFORCE_ACCOUNTS, json=fixture_json("records_mixed.json"))
    messages = [
        envelope_schema("accounts"),
        envelope("accounts", "Acme-Robotics.com", source="SALESFORCE", sourceRecordId="001A"),
        envelope("accounts", "globex.com", source="SALESFORCE", sourceRecordId="001B"),
        envelope("accounts", "not a domain", source="SALESFORCE", sourceRecordId="001C"),
    ]

    state = run_target(make_config(), messages, capsys).state

    acme, globex, bad = entries(state, "accounts")
    assert (acme["success"], acme["id"], acme["externalId"]) == (
        True,
        "7bb72d89-6610-4956-a181-9883773c2ba6",
        "001A",
    )
    assert (globex["success"], globex["id"]) == (True, "0c5e41aa-93f1-4c1e-b2d4-8f0a7e6b5c21")
    assert "error" not in globex
    assert (bad["success"], bad["id"], bad["externalId"]) == (False, None, "001C")
    assert bad["error"] == "CBX1 rejected the record: Invalid domain: not a domain"
    assert state["summary"]["accounts"] == {"success": 1, "fail": 1, "existing": 1, "updated": 0}


def test_a_sent_record_without_a_result_fails_naming_its_lookup_key(api, capsys):
    api.post(records_url("MARKETO", "CONTACT"), json=fixture_json("records_missing_results.json"))
    messages = [
        envelope_schema("leads"),
        envelope("leads", "ann@acme-robotics.com", source="MARKETO", sourceRecordId="1045"),
        envelope("leads", "bob@acme-robotics.com", source="MARKETO"),
    ]

    ann, bob = entries(run_target(make_config(), messages, capsys).state, "leads")

    assert ann["success"] is True
    assert bob["success"] is False
    assert "no result returned for lookupKey 'bob@acme-robotics.com'" in bob["error"]
    assert bob["externalId"] is None


def test_an_unknown_result_status_is_not_taken_for_a_success(api, capsys):
    answer = {
        "status": {"code": "CM000"},
        "data": {"results": [{"status": "QUEUED", "lookupKey": "acme.com"}]},
    }
    api.post(HUBSPOT_ACCOUNTS, json=answer)
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com", source="HUBSPOT")]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert "'QUEUED'" in entry["error"]


def test_an_answer_without_readable_results_fails_every_record(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json={"status": {"code": "CM000"}, "data": {"results": "none"}})
    messages = [envelope_schema("accounts"), envelope("accounts", "a.com", source="HUBSPOT")]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert "without a readable data object" in entry["error"]


def test_record_mode_sends_a_request_of_one_to_the_same_endpoint(api, capsys):
    api.post(HUBSPOT_CONTACTS, json=records_answer(skip={"bob@acme.com"}))
    messages = [
        envelope_schema("contacts"),
        envelope("contacts", "ann@acme.com", source="HUBSPOT", sourceRecordId="501"),
        envelope("contacts", "bob@acme.com", source="HUBSPOT", sourceRecordId="502"),
    ]

    state = run_target(make_config(process_as_batch=False), messages, capsys).state

    assert [len(body["records"]) for body in posted(api, "/records")] == [1, 1]
    assert [(e["success"], e["id"], e["externalId"]) for e in entries(state, "contacts")] == [
        (True, cbx1_id("ann@acme.com"), "501"),
        (True, cbx1_id("bob@acme.com"), "502"),
    ]
    assert state["summary"]["contacts"] == {"success": 1, "fail": 0, "existing": 1, "updated": 0}


# Whole-request rejections


def test_a_400_naming_one_record_is_isolated_so_the_others_land(api, capsys):
    rejected = fixture_json("records_record_rejected.json")

    def answer(request, context):
        records = request.json()["records"]
        if len(records) > 1 or records[0]["lookupKey"] == "initech.com":
            context.status_code = 400
            return rejected
        return records_answer()(request, context)

    api.post(HUBSPOT_ACCOUNTS, json=answer)
    messages = [envelope_schema("accounts")] + [
        envelope("accounts", domain, source="HUBSPOT") for domain in ("acme.com", "initech.com", "globex.com")
    ]

    state = run_target(make_config(), messages, capsys).state

    assert [len(body["records"]) for body in posted(api, "/records")] == [3, 1, 1, 1]
    acme, initech, globex = entries(state, "accounts")
    assert acme["success"] is True
    assert globex["success"] is True
    assert initech["success"] is False
    assert "data.employeeCount must be a number" in initech["error"]


def test_a_400_naming_the_source_fails_the_chunk_without_resending_it(api, capsys):
    api.post(
        records_url("PIPEDRIVE", "ACCOUNT"), status_code=400, json=fixture_json("records_unknown_source.json")
    )
    messages = [envelope_schema("accounts")] + [
        envelope("accounts", domain, source="pipedrive") for domain in ("acme.com", "globex.com")
    ]

    state = run_target(make_config(), messages, capsys).state

    assert len(data_requests(api)) == 1
    for entry in entries(state, "accounts"):
        assert entry["success"] is False
        assert "Unknown source 'PIPEDRIVE'" in entry["error"]


# Sources


@pytest.mark.parametrize(
    ("record_source", "setting", "connector_id", "expected"),
    [
        ("Salesforce", "MARKETO", "hubspot", "SALESFORCE"),
        (None, "marketo", "hubspot", "MARKETO"),
        (None, None, "hubspot", "HUBSPOT"),
        (None, None, "HubSpot", "HUBSPOT"),
    ],
)
def test_source_is_the_records_else_the_setting_else_connector_id_upper_cased(
    api, capsys, monkeypatch, record_source, setting, connector_id, expected
):
    monkeypatch.setenv("CONNECTOR_ID", connector_id)
    api.post(records_url(expected, "ACCOUNT"), json=records_answer())
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com", source=record_source)]

    state = run_target(make_config(source=setting), messages, capsys).state

    assert [r.url for r in data_requests(api)] == [records_url(expected, "ACCOUNT")]
    assert posted(api, "/records")[0]["records"][0]["source"] == expected
    assert entries(state, "accounts")[0]["success"] is True


def test_a_record_with_no_source_anywhere_fails_naming_source_and_connector_id(api, capsys):
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com")]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert "`source`" in entry["error"]
    assert "CONNECTOR_ID" in entry["error"]
    assert entry["lookupKey"] == "acme.com"
    assert data_requests(api) == []


@pytest.mark.parametrize(
    "bad", ["hub/spot", "../../admin", "HUB SPOT", "hub%2Fspot", "hübspot", "HUBSPOT\n", 7]
)
def test_a_source_that_is_not_a_plain_word_fails_and_never_reaches_a_url(api, capsys, bad):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    messages = [
        envelope_schema("accounts"),
        envelope("accounts", "bad.com", source=bad),
        envelope("accounts", "good.com", source="HUBSPOT"),
    ]

    bad_entry, good_entry = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert bad_entry["success"] is False
    assert "invalid source" in bad_entry["error"]
    assert good_entry["success"] is True
    assert [r.url for r in data_requests(api)] == [HUBSPOT_ACCOUNTS]


def test_a_bad_connector_id_fails_the_records_naming_it(api, capsys, monkeypatch):
    monkeypatch.setenv("CONNECTOR_ID", "hub/spot")
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com")]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert "CONNECTOR_ID" in entry["error"]
    assert data_requests(api) == []


def test_a_source_setting_that_is_not_a_plain_word_is_a_config_error():
    with pytest.raises(ConfigValidationError) as caught:
        TargetCBX1(config=make_config(source="hub/spot"))
    assert caught.value.errors == ["source: must be one word of letters, digits, _ or -, such as HUBSPOT"]


def test_one_request_never_mixes_two_sources(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    api.post(SALESFORCE_ACCOUNTS, json=records_answer())
    sources = ["HUBSPOT", "HUBSPOT", "SALESFORCE", "HUBSPOT", "SALESFORCE", "SALESFORCE"]
    messages = [envelope_schema("accounts")] + [
        envelope("accounts", f"company{n}.com", source=source) for n, source in enumerate(sources)
    ]

    state = run_target(make_config(max_concurrency=1), messages, capsys).state

    bodies = posted(api, "/records")
    assert [[record["lookupKey"] for record in body["records"]] for body in bodies] == [
        ["company0.com", "company1.com", "company3.com"],
        ["company2.com", "company4.com", "company5.com"],
    ]
    assert [r.url for r in data_requests(api)] == [HUBSPOT_ACCOUNTS, SALESFORCE_ACCOUNTS]
    assert all(entry["success"] for entry in entries(state, "accounts"))


# Envelope checks and options


@pytest.mark.parametrize("lookup_key", [None, "", "   "])
def test_an_envelope_without_a_lookup_key_is_not_sent_and_fails_naming_it(api, capsys, lookup_key):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    record = envelope("accounts", "acme.com", source="HUBSPOT")
    record["record"]["lookupKey"] = lookup_key
    messages = [envelope_schema("accounts"), record]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert entry["error"].startswith("lookupKey is required")
    assert data_requests(api) == []


def test_an_envelope_without_data_is_not_sent(api, capsys):
    record = envelope("accounts", "acme.com", source="HUBSPOT")
    del record["record"]["data"]

    (entry,) = entries(
        run_target(make_config(), [envelope_schema("accounts"), record], capsys).state, "accounts"
    )

    assert entry["success"] is False
    assert entry["error"].startswith("data is required")
    assert data_requests(api) == []


def test_lookup_keys_cbx1_may_refuse_are_still_sent_for_it_to_judge(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer(reject={"not a domain": "Invalid domain: not a domain"}))
    messages = [envelope_schema("accounts"), envelope("accounts", "not a domain", source="HUBSPOT")]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert posted(api, "/records")[0]["records"][0]["lookupKey"] == "not a domain"
    assert entry["error"] == "CBX1 rejected the record: Invalid domain: not a domain"


def test_record_options_go_to_the_envelopes_top_level(api, capsys, monkeypatch):
    monkeypatch.setenv("JOB_ROOT", "job_42")
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    data = {"name": "Acme", "_sdc_extracted_at": "2026-01-01"}
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com", data, source="HUBSPOT")]
    config = make_config(add_stream_key=True, metadata={"job": "nightly"}, inject_batch_ids=True)

    state = run_target(config, messages, capsys).state

    (sent,) = posted(api, "/records")[0]["records"]
    assert sent["data"] == {"name": "Acme"}
    assert sent["stream"] == "accounts"
    assert sent["metadata"] == {"job": "nightly"}
    assert len(sent["hgBatchId"]) == 32
    assert entries(state, "accounts")[0]["hgBatchId"] == sent["hgBatchId"]


def test_one_lookup_key_is_never_twice_in_a_request(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    messages = [
        envelope_schema("accounts"),
        envelope("accounts", "acme.com", {"name": "Acme"}, source="HUBSPOT"),
        envelope("accounts", "ACME.com", {"name": "Acme Inc"}, source="HUBSPOT"),
    ]

    state = run_target(make_config(), messages, capsys).state

    assert [[r["data"]["name"] for r in body["records"]] for body in posted(api, "/records")] == [
        ["Acme"],
        ["Acme Inc"],
    ]
    assert all(entry["success"] for entry in entries(state, "accounts"))


def test_identical_envelopes_are_sent_once_and_counted_existing(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    same = envelope("accounts", "acme.com", source="HUBSPOT", sourceRecordId="1")
    messages = [envelope_schema("accounts"), same, same]

    state = run_target(make_config(), messages, capsys).state

    assert len(posted(api, "/records")[0]["records"]) == 1
    assert [e["id"] for e in entries(state, "accounts")] == [cbx1_id("acme.com")] * 2
    assert state["summary"]["accounts"] == {"success": 1, "fail": 0, "existing": 1, "updated": 0}


# api setting


def test_api_records_wraps_flat_records_as_envelopes(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    flat = account(1, "https://www.Acme.com/", crmSystem="hubspot")
    flat["record"]["_sdc_sequence"] = 7
    messages = [schema("accounts"), flat]

    state = run_target(make_config(api="records"), messages, capsys).state

    (sent,) = posted(api, "/records")[0]["records"]
    assert sent == {
        "data": {
            "crmAssociationId": "00100001",
            "name": "Company 1",
            "domain": "acme.com",
            "crmSystem": "hubspot",
        },
        "lookupKey": "acme.com",
        "source": "HUBSPOT",
        "sourceRecordId": "00100001",
    }
    (entry,) = entries(state, "accounts")
    assert (entry["success"], entry["id"], entry["externalId"]) == (True, cbx1_id("acme.com"), "00100001")


def test_api_records_still_checks_flat_lookup_keys_locally(api, capsys):
    messages = [schema("accounts"), account(1, "not a domain", crmSystem="HUBSPOT")]

    (entry,) = entries(run_target(make_config(api="records"), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert "invalid domain" in entry["error"]
    assert data_requests(api) == []


def test_api_bulk_sends_envelope_streams_to_bulk_as_before(api, capsys):
    api.post(f"{API}/api/t/v1/targets/accounts/bulk", json=bulk_answer())
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com", source="HUBSPOT")]

    (entry,) = entries(run_target(make_config(api="bulk"), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert entry["error"].startswith("domain is required")


# max_request_bytes


def test_chunks_close_before_their_body_passes_max_request_bytes(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    messages = [envelope_schema("accounts")] + [
        envelope("accounts", f"company{n}.com", {"about": "x" * 200}, source="HUBSPOT") for n in range(10)
    ]

    state = run_target(make_config(max_request_bytes=1000, inject_batch_ids=True), messages, capsys).state

    bodies = [r.body for r in data_requests(api)]
    assert len(bodies) > 1
    assert all(len(body) <= 1000 for body in bodies)
    assert sum(len(r.json()["records"]) for r in data_requests(api)) == 10
    assert all(entry["success"] for entry in entries(state, "accounts"))


def test_a_record_over_max_request_bytes_fails_saying_so_and_is_not_sent(api, capsys):
    api.post(f"{API}/api/t/v1/targets/accounts/bulk", json=bulk_answer())
    messages = [schema("accounts"), account(1, name="x" * 2000), account(2)]

    state = run_target(make_config(max_request_bytes=500), messages, capsys).state

    big, small = entries(state, "accounts")
    assert big["success"] is False
    assert "max_request_bytes (500)" in big["error"]
    assert small["success"] is True
    assert [[p["domain"] for p in body] for body in posted(api)] == [["company2.com"]]


# Dry run


def test_a_dry_run_shows_the_records_endpoint_and_sends_nothing(api, capsys):
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com", source="HUBSPOT")]

    TargetCBX1(config=make_config(dry_run=True)).listen(stdin_of(messages))

    output = capsys.readouterr()
    (entry,) = entries(json.loads(output.out.splitlines()[-1]), "accounts")
    assert entry["error"].startswith("dry run")
    assert (
        "Dry run: POST api/t/v1/targets/integrations/HUBSPOT/ACCOUNT/records would send 1 records"
        in output.err
    )
    assert '"records": [' in output.err
    assert api.request_history == []


@pytest.mark.parametrize(("batch", "around"), [(True, 2), (False, 0)], ids=["bulk", "upsert"])
def test_max_request_bytes_counts_the_exact_body_of_the_request_that_carries_the_record(
    api, capsys, batch, around
):
    api.post(f"{API}/api/t/v1/targets/accounts/bulk", json=bulk_answer())
    api.post(f"{API}/api/t/v1/targets/accounts/upsert", json=upsert_answer)
    payload = {"crmAssociationId": "00100001", "name": "Company 1", "domain": "company1.com"}
    exact = len(json.dumps(payload, separators=(",", ":"))) + around  # "[...]" for /bulk, bare for /upsert
    messages = [schema("accounts"), account(1)]

    fits = run_target(make_config(max_request_bytes=exact, process_as_batch=batch), messages, capsys)
    too_big = run_target(make_config(max_request_bytes=exact - 1, process_as_batch=batch), messages, capsys)

    assert entries(fits.state, "accounts")[0]["success"] is True
    assert f"its request body would be {exact} bytes" in entries(too_big.state, "accounts")[0]["error"]
    assert [len(r.body) for r in data_requests(api)] == [exact]


@pytest.mark.parametrize("odd", [True, {"k": "v"}, 1.5])  # the types the ETL schema allows
def test_a_lookup_key_that_is_not_text_fails_alone_and_is_never_sent(api, capsys, odd):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    messages = [
        envelope_schema("accounts"),
        envelope("accounts", "good.com", source="HUBSPOT"),
        envelope("accounts", odd, source="HUBSPOT"),
    ]

    good, bad = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert good["success"] is True
    assert bad["success"] is False
    assert bad["error"].startswith("lookupKey must be text")
    assert [r["lookupKey"] for r in posted(api, "/records")[0]["records"]] == ["good.com"]


def test_an_integer_lookup_key_is_sent_as_a_number_and_matched_by_its_digits(api, capsys):
    answer = {
        "status": {"code": "CM000"},
        "data": {"results": [{"status": "SUCCESS", "entityId": "e-1", "lookupKey": 42}]},
    }
    api.post(HUBSPOT_CONTACTS, json=answer)
    messages = [envelope_schema("contacts"), envelope("contacts", 42, source="HUBSPOT")]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "contacts")

    assert posted(api, "/records")[0]["records"][0]["lookupKey"] == 42
    assert (entry["success"], entry["id"], entry["lookupKey"]) == (True, "e-1", "42")


def test_an_unreadable_result_costs_only_its_own_record(api, capsys):
    results = [
        {"status": "SUCCESS", "entityId": "e-good", "lookupKey": "good.com"},
        {"status": "SUCCESS", "entityId": {"not": "an id"}, "lookupKey": "odd.com"},
        {
            "status": "FAILED",
            "entityId": None,
            "lookupKey": "bad.com",
            "error": {"code": 17, "field": "domain"},
        },
    ]
    api.post(HUBSPOT_ACCOUNTS, json={"status": {"code": "CM000"}, "data": {"results": results}})
    messages = [envelope_schema("accounts")] + [
        envelope("accounts", key, source="HUBSPOT") for key in ("good.com", "odd.com", "bad.com")
    ]

    good, odd, bad = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert (good["success"], good["id"]) == (True, "e-good")
    assert odd["error"].startswith("no result returned for lookupKey 'odd.com'")
    assert bad["error"] == 'CBX1 rejected the record: {"code":17,"field":"domain"}'


@pytest.mark.parametrize(
    "second",
    [
        {"status": "FAILED", "entityId": None, "lookupKey": "ACME.com", "error": "Invalid domain"},
        {"status": "SUCCESS", "entityId": "e-other", "lookupKey": "acme.com"},
    ],
)
def test_two_results_for_one_key_that_disagree_fail_the_record(api, capsys, second):
    first = {"status": "SUCCESS", "entityId": "e-1", "lookupKey": "acme.com"}
    api.post(HUBSPOT_ACCOUNTS, json={"status": {"code": "CM000"}, "data": {"results": [first, second]}})
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com", source="HUBSPOT")]

    (entry,) = entries(run_target(make_config(process_as_batch=False), messages, capsys).state, "accounts")

    assert entry["success"] is False
    assert entry["error"].startswith("CBX1 returned conflicting results for lookupKey 'acme.com'")


def test_a_lone_result_without_a_lookup_key_belongs_to_the_one_record_sent(api, capsys):
    result = {"status": "FAILED", "entityId": None, "lookupKey": None, "error": "lookupKey is required"}
    api.post(HUBSPOT_ACCOUNTS, json={"status": {"code": "CM000"}, "data": {"results": [result]}})
    messages = [envelope_schema("accounts"), envelope("accounts", "acme.com", source="HUBSPOT")]

    (entry,) = entries(run_target(make_config(), messages, capsys).state, "accounts")

    assert entry["error"] == "CBX1 rejected the record: lookupKey is required"


@pytest.mark.parametrize(
    "message",
    [
        "Unknown source 'foo': this API ingests HUBSPOT",
        "Invalid source in path",
        "Unsupported objectType: account",
    ],
)
def test_a_400_about_the_source_or_object_type_in_any_wording_is_not_isolated(api, capsys, message):
    api.post(HUBSPOT_ACCOUNTS, status_code=400, json={"status": {"code": "CM400", "message": message}})
    messages = [envelope_schema("accounts")] + [
        envelope("accounts", f"company{n}.com", source="HUBSPOT") for n in range(5)
    ]

    state = run_target(make_config(), messages, capsys).state

    assert len(data_requests(api)) == 1
    assert all(message in entry["error"] for entry in entries(state, "accounts"))


def test_interleaved_sources_share_no_request_yet_travel_in_full_chunks_and_keep_key_order(api, capsys):
    api.post(HUBSPOT_ACCOUNTS, json=records_answer())
    api.post(SALESFORCE_ACCOUNTS, json=records_answer())
    messages = [envelope_schema("accounts")]
    for n in range(20):
        messages.append(envelope("accounts", f"company{n}.com", {"n": n}, source="HUBSPOT"))
        messages.append(envelope("accounts", f"other{n}.com", {"n": n}, source="SALESFORCE"))
    messages.append(envelope("accounts", "company3.com", {"n": "later"}, source="SALESFORCE"))

    state = run_target(make_config(max_concurrency=1), messages, capsys).state

    requests = [(r.url, {record["source"] for record in r.json()["records"]}) for r in data_requests(api)]
    assert len(requests) == 3  # full chunks per source (20 + 20 + 1), not one record per request
    assert all(sources == {url.split("/")[-3]} for url, sources in requests)
    company3 = [
        record["data"]["n"]
        for body in posted(api, "/records")
        for record in body["records"]
        if record["lookupKey"] == "company3.com"
    ]
    assert company3 == [3, "later"]
    assert all(entry["success"] for entry in entries(state, "accounts"))
