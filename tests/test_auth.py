"""Session tokens: fetched once, reused, refreshed before expiry and once after a 401, written back."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from target_cbx1.auth import SessionTokenAuth
from target_cbx1.errors import CredentialsError
from target_cbx1.target import TargetCBX1
from tests.conftest import (
    ACCESS_KEY,
    API,
    ORG_ID,
    TOKEN_URL,
    account,
    bulk_answer,
    contact,
    fixture_json,
    make_config,
    run_target,
    schema,
    stdin_of,
)

RECORDED_TOKEN = fixture_json("auth_token.json")["data"]["sessionToken"]


def token_answer(token: str, max_age: int = 3600) -> dict:
    return {
        "json": {
            "status": {"code": "CM000", "message": "Success"},
            "data": {"sessionToken": token, "maxAge": max_age},
        }
    }


def data_requests(api):
    return [r for r in api.request_history if r.method == "POST"]


def test_token_is_fetched_once_and_sent_on_every_call(api, capsys):
    api.post(requests_mock_any_bulk(), json=bulk_answer())
    messages = [schema("accounts"), schema("contacts"), account(1), contact(1), account(2)]

    run_target(make_config(batch_size=1), messages, capsys)

    token_calls = [r for r in api.request_history if r.url.startswith(TOKEN_URL)]
    assert len(token_calls) == 1
    assert token_calls[0].qs == {
        "authenticationtype": ["access_key"],
        "code": [ACCESS_KEY.lower()],
        "orgid": [ORG_ID],
    }
    assert len(data_requests(api)) == 3
    for request in data_requests(api):
        assert request.headers["Authorization"] == f"Bearer {RECORDED_TOKEN}"
        assert request.headers["x-organisation-id"] == ORG_ID


def test_hotglue_config_keys_are_accepted(api, capsys):
    api.post(requests_mock_any_bulk(), json=bulk_answer())
    config = {"api_url": API, "Code": ACCESS_KEY, "OrgId": 42, "backoff_base_seconds": 0}

    state = run_target(config, [schema("accounts"), account(1)], capsys).state

    assert api.request_history[0].qs["code"] == [ACCESS_KEY.lower()]
    assert data_requests(api)[0].headers["x-organisation-id"] == "42"
    assert state["bookmarks"]["accounts"][0]["success"] is True


def test_numeric_org_id_is_sent_as_text(api, capsys):
    api.post(requests_mock_any_bulk(), json=bulk_answer())

    run_target(make_config(org_id=42), [schema("accounts"), account(1)], capsys)

    assert data_requests(api)[0].headers["x-organisation-id"] == "42"


def test_cached_token_is_used_while_valid(api, capsys):
    api.post(requests_mock_any_bulk(), json=bulk_answer())
    config = make_config(AccessToken="cached-token-1", expires_in=time.time() + 3600)

    run_target(config, [schema("accounts"), account(1)], capsys)

    assert not [r for r in api.request_history if r.url.startswith(TOKEN_URL)]
    assert data_requests(api)[0].headers["Authorization"] == "Bearer cached-token-1"


def test_token_expiring_within_two_minutes_is_refreshed_first(api, capsys):
    api.post(requests_mock_any_bulk(), json=bulk_answer())
    config = make_config(access_token="old-token-1", expires_in=time.time() + 60)

    run_target(config, [schema("accounts"), account(1)], capsys)

    assert api.request_history[0].url.startswith(TOKEN_URL)
    assert data_requests(api)[0].headers["Authorization"] == f"Bearer {RECORDED_TOKEN}"


def test_refresh_margin_with_a_clock():
    session = requests.Session()
    now = [1000.0]
    auth = SessionTokenAuth(
        session, TOKEN_URL, access_key=ACCESS_KEY, org_id=ORG_ID, timeout=5,
        token="t-valid", expires_at=1000 + 121, clock=lambda: now[0],
    )  # fmt: skip
    assert auth.token() == "t-valid"
    now[0] = 1002.0  # 119 s left: under HotGlue's 120 s margin
    with pytest.raises(requests.ConnectionError):
        auth.token()  # tries to refresh (no server here)


def test_a_401_refreshes_the_token_once_and_repeats_the_call(api, capsys):
    api.get(TOKEN_URL, [token_answer("first-token"), token_answer("second-token")])
    api.post(
        requests_mock_any_bulk(),
        [{"status_code": 401, "json": {"status": {"code": "AU401", "message": "Token expired"}}},
         {"json": bulk_answer()}],
    )  # fmt: skip

    state = run_target(make_config(), [schema("accounts"), account(1)], capsys).state

    auths = [r.headers["Authorization"] for r in data_requests(api)]
    assert auths == ["Bearer first-token", "Bearer second-token"]
    assert state["bookmarks"]["accounts"][0]["success"] is True


def test_401s_to_fresh_tokens_stop_the_run_with_a_credentials_message(api):
    api.get(TOKEN_URL, [token_answer(f"token-{number}") for number in range(4)])
    api.post(requests_mock_any_bulk(), status_code=401, json={"status": {"code": "AU401", "message": "Nope"}})
    target = TargetCBX1(config=make_config())

    with pytest.raises(CredentialsError, match="401") as failure:
        target.listen(stdin_of([schema("accounts"), account(1)]))

    assert "access_key" in str(failure.value)
    assert len(data_requests(api)) == 4  # the first try and a repeat with each of 3 new tokens
    assert [request.headers["Authorization"] for request in data_requests(api)] == [
        f"Bearer token-{number}" for number in range(4)
    ]


@pytest.mark.parametrize("status", [401, 403])
def test_wrong_credentials_fail_fast_without_leaking_the_key(api, status):
    api.get(TOKEN_URL, status_code=status, json=fixture_json("auth_rejected.json"))
    target = TargetCBX1(config=make_config())

    with pytest.raises(CredentialsError) as failure:
        target.listen(stdin_of([schema("accounts"), account(1)]))

    message = str(failure.value)
    assert "authentication failed" in message
    assert "Invalid access key" in message
    assert ACCESS_KEY not in message
    assert len(api.request_history) == 1


def test_new_token_is_written_back_into_a_hotglue_config_file(api, tmp_path):
    api.post(requests_mock_any_bulk(), json=bulk_answer())
    config_file = tmp_path / "config.json"
    config = {"api_url": API, "Code": ACCESS_KEY, "OrgId": ORG_ID, "flow": "F1", "backoff_base_seconds": 0}
    config_file.write_text(json.dumps(config))
    before = time.time()

    target = TargetCBX1(config=dict(config), config_path=config_file)
    target.listen(stdin_of([schema("accounts"), account(1)]))

    saved = json.loads(config_file.read_text())
    assert saved["AccessToken"] == RECORDED_TOKEN
    assert before + 3600 - 5 <= saved["expires_in"] <= time.time() + 3600
    assert {k: saved[k] for k in config} == config


def test_write_back_uses_our_key_names_for_our_config(api, tmp_path):
    api.post(requests_mock_any_bulk(), json=bulk_answer())
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(make_config()))

    target = TargetCBX1(config=make_config(), config_path=config_file)
    target.listen(stdin_of([schema("accounts"), account(1)]))

    saved = json.loads(config_file.read_text())
    assert saved["access_token"] == RECORDED_TOKEN
    assert "AccessToken" not in saved


def test_write_back_goes_to_the_key_the_token_was_read_from(api, tmp_path):
    api.post(requests_mock_any_bulk(), json=bulk_answer())
    config_file = tmp_path / "config.json"
    config = make_config(Code=ACCESS_KEY, access_token="stale", expires_in=1)
    config_file.write_text(json.dumps(config))

    TargetCBX1(config=dict(config), config_path=config_file).listen(
        stdin_of([schema("accounts"), account(1)])
    )

    saved = json.loads(config_file.read_text())
    assert saved["access_token"] == RECORDED_TOKEN
    assert "AccessToken" not in saved


def requests_mock_any_bulk() -> re.Pattern[str]:
    return re.compile(rf"{API}/api/t/v1/targets/\w+/(bulk|upsert)")
