"""The HTTP client: URLs, headers, retries, Retry-After, rejections and unreadable answers."""

from __future__ import annotations

import logging

import pytest
import requests

from target_cbx1.errors import CredentialsError, UnreachableError
from target_cbx1.target import TargetCBX1
from tests.conftest import (
    ACCESS_KEY,
    API,
    account,
    bulk_answer,
    cbx1_id,
    fixture_json,
    fixture_text,
    make_config,
    posted,
    run_target,
    schema,
    stdin_of,
)

BULK = f"{API}/api/t/v1/targets/accounts/bulk"
UPSERT = f"{API}/api/t/v1/targets/accounts/upsert"
MESSAGES = [schema("accounts"), account(1), account(2)]


def only_entries(state: dict) -> list[dict]:
    return state["bookmarks"]["accounts"]


@pytest.mark.parametrize("api_url", [API, f"{API}/"])
def test_base_url_with_or_without_trailing_slash(api, capsys, api_url):
    api.post(BULK, json=bulk_answer())

    run_target(make_config(api_url=api_url), MESSAGES, capsys)

    assert [r.url for r in api.request_history if r.method == "POST"] == [BULK]


def test_base_url_with_a_path_prefix_keeps_it(api, capsys):
    api.get(f"{API}/cbx/api/g/v1/auth/tokens", json=fixture_json("auth_token.json"))
    api.post(f"{API}/cbx/api/t/v1/targets/accounts/bulk", json=bulk_answer())

    state = run_target(make_config(api_url=f"{API}/cbx"), MESSAGES, capsys).state

    assert all(e["success"] for e in only_entries(state))


def test_default_and_custom_headers(api, capsys):
    api.post(BULK, json=bulk_answer())
    config = make_config(custom_headers=[{"name": "X-Tenant", "value": "t-9"}])

    run_target(config, MESSAGES, capsys)

    headers = next(r for r in api.request_history if r.method == "POST").headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("target-cbx1/")
    assert headers["X-Tenant"] == "t-9"


def test_user_agent_setting(api, capsys):
    api.post(BULK, json=bulk_answer())

    run_target(make_config(user_agent="acme-sync/2.0"), MESSAGES, capsys)

    assert next(r for r in api.request_history if r.method == "POST").headers["User-Agent"] == "acme-sync/2.0"


def test_server_errors_are_retried_until_success(api, capsys, sleeps):
    api.post(
        BULK,
        [
            {"status_code": 502, "text": fixture_text("gateway_error.html")},
            {"status_code": 503, "text": ""},
            {"json": bulk_answer()},
        ],
    )

    state = run_target(make_config(backoff_base_seconds=1, backoff_max_seconds=10), MESSAGES, capsys).state

    assert len(posted(api)) == 3
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1
    assert 1 <= sleeps[1] <= 2
    assert all(e["success"] for e in only_entries(state))


def test_spent_retries_fail_the_requests_records_with_status_and_server_message(api, capsys, sleeps):
    api.post(BULK, status_code=502, text=fixture_text("gateway_error.html"))

    state = run_target(make_config(max_retries=2), MESSAGES, capsys).state

    assert len(posted(api)) == 3
    for entry in only_entries(state):
        assert entry["success"] is False
        assert "HTTP 502" in entry["error"]
        assert "502 Bad Gateway" in entry["error"]
        assert "<html>" not in entry["error"]
        assert "gave up after 3 attempts" in entry["error"]
    assert state["summary"]["accounts"]["fail"] == 2


def test_retry_after_is_honoured_even_above_backoff_max(api, capsys, sleeps):
    api.post(BULK, [{"status_code": 429, "headers": {"Retry-After": "7"}}, {"json": bulk_answer()}])

    state = run_target(make_config(backoff_max_seconds=1), MESSAGES, capsys).state

    assert sleeps == [7]
    assert all(e["success"] for e in only_entries(state))


def test_retry_after_longer_than_the_cap_fails_the_request(api, capsys, sleeps):
    api.post(BULK, status_code=503, headers={"Retry-After": "3600"}, text="down for maintenance")

    state = run_target(make_config(retry_after_max_seconds=300), MESSAGES, capsys).state

    assert sleeps == []
    assert len(posted(api)) == 1
    error = only_entries(state)[0]["error"]
    assert "3600 s" in error
    assert "retry_after_max_seconds" in error


@pytest.mark.parametrize("status", [404, 405])
def test_wrong_endpoint_answers_are_not_retried(api, capsys, sleeps, status):
    api.post(BULK, status_code=status, json={"status": {"code": "CM404", "message": "No such target"}})

    state = run_target(make_config(), MESSAGES, capsys).state

    assert len(posted(api)) == 1
    assert sleeps == []
    assert all(f"HTTP {status}: No such target" in e["error"] for e in only_entries(state))


@pytest.mark.parametrize("status", [400, 422])
def test_rejected_bulk_is_split_into_single_upserts_so_only_the_bad_record_fails(api, capsys, sleeps, status):
    api.post(BULK, status_code=status, json={"status": {"code": "VL400", "message": "domain is malformed"}})
    bad_domain = "company1.com"

    def upsert(request, context):
        if request.json()["domain"] == bad_domain:
            context.status_code = status
            return {"status": {"code": "VL400", "message": "domain is malformed"}}
        return {"status": {"code": "CM000"}, "data": {"id": cbx1_id(request.json()["domain"])}}

    api.post(UPSERT, json=upsert)

    entries = only_entries(run_target(make_config(), MESSAGES, capsys).state)

    assert len(posted(api)) == 1
    assert sleeps == []
    assert [e["success"] for e in entries] == [e["lookupKey"] != bad_domain for e in entries]
    bad = next(e for e in entries if e["lookupKey"] == bad_domain)
    assert bad["error"] == f"CBX1 rejected the request (HTTP {status}: domain is malformed)"
    assert len(posted(api, "/upsert")) == len(entries)


def test_envelope_other_than_cm000_fails_with_its_message(api, capsys):
    api.post(BULK, json=fixture_json("envelope_not_cm000.json"))

    state = run_target(make_config(), MESSAGES, capsys).state

    for entry in only_entries(state):
        assert entry["success"] is False
        assert "TG503" in entry["error"]
        assert "Bulk ingestion is paused for this organisation" in entry["error"]


def test_a_2xx_html_page_fails_with_the_start_of_the_body(api, capsys):
    api.post(BULK, status_code=200, text=fixture_text("gateway_error.html"))

    state = run_target(make_config(), MESSAGES, capsys).state

    error = only_entries(state)[0]["error"]
    assert "not the documented JSON envelope" in error
    assert "502 Bad Gateway" in error


def test_a_2xx_without_results_fails_every_record(api, capsys):
    api.post(BULK, json={"status": {"code": "CM000"}, "data": {"results": "later"}})

    state = run_target(make_config(), MESSAGES, capsys).state

    assert all("without a readable data object" in e["error"] for e in only_entries(state))


def test_network_errors_are_retried_and_reported_without_secrets(api, capsys, sleeps, caplog):
    api.get(
        f"{API}/api/g/v1/auth/tokens",
        exc=requests.ConnectionError(
            f"Max retries exceeded with url: /api/g/v1/auth/tokens?code={ACCESS_KEY}"
        ),
    )
    caplog.set_level(logging.DEBUG)

    # The host never answered, so after its retries the run stops (tests/test_first_hour.py).
    with pytest.raises(UnreachableError, match="connection failed") as stopped:
        run_target(make_config(max_retries=1), MESSAGES, capsys)

    assert ACCESS_KEY not in str(stopped.value)
    assert ACCESS_KEY not in caplog.text
    assert len(sleeps) == 1


def test_read_timeouts_are_retried(api, capsys, sleeps):
    api.post(BULK, [{"exc": requests.ReadTimeout("read timed out")}, {"json": bulk_answer()}])

    state = run_target(make_config(timeout=5), MESSAGES, capsys).state

    assert len(sleeps) == 1
    assert all(e["success"] for e in only_entries(state))


def test_a_403_stops_the_run_with_a_permissions_message(api):
    api.post(BULK, status_code=403, json={"status": {"code": "AU403", "message": "Forbidden for org"}})

    with pytest.raises(CredentialsError, match="permission") as failure:
        TargetCBX1(config=make_config()).listen(stdin_of(MESSAGES))

    assert "Forbidden for org" in str(failure.value)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"success": False, "error": "email taken"}, "CBX1 rejected the record: email taken"),
        ({"success": "true", "id": "x"}, "CBX1 rejected the record: (no reason given)"),
        (None, "returned no id for the record (no data)"),
        ({}, "returned no id for the record"),
        ({"id": None}, "returned no id for the record"),
    ],
)
def test_an_upsert_answer_is_a_success_only_with_an_id_and_no_false_flag(api, capsys, data, error):
    api.post(UPSERT, json={"status": {"code": "CM000", "message": "Success"}, "data": data})

    state = run_target(make_config(process_as_batch=False), [schema("accounts"), account(1)], capsys).state

    (entry,) = only_entries(state)
    assert entry["success"] is False
    assert error in entry["error"]


@pytest.mark.parametrize("flag", ["true", 1, "yes", None])
def test_a_bulk_success_flag_other_than_true_is_not_a_success(api, capsys, flag):
    result = {"success": flag, "id": "x", "lookupKey": "company1.com"}
    api.post(BULK, json={"status": {"code": "CM000"}, "data": {"results": [result]}})

    state = run_target(make_config(), [schema("accounts"), account(1)], capsys).state

    assert only_entries(state)[0]["success"] is False


def test_two_bulk_results_for_one_key_that_disagree_fail_the_record(api, capsys):
    results = [
        {"success": True, "id": "id-1", "lookupKey": "company1.com"},
        {"success": False, "id": None, "lookupKey": "Company1.com", "error": "duplicate"},
    ]
    api.post(BULK, json={"status": {"code": "CM000"}, "data": {"results": results}})

    state = run_target(make_config(), [schema("accounts"), account(1)], capsys).state

    assert only_entries(state)[0]["error"].startswith("CBX1 returned conflicting results")


def test_an_upsert_answer_with_success_null_is_not_a_success(api, capsys):
    api.post(UPSERT, json={"status": {"code": "CM000"}, "data": {"success": None, "id": "x"}})

    state = run_target(make_config(process_as_batch=False), [schema("accounts"), account(1)], capsys).state

    assert only_entries(state)[0]["success"] is False
