"""Unit tests for target_cbx1.settings: defaults, HotGlue aliases, BASE_URL and validation."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from singer_sdk.exceptions import ConfigValidationError

from target_cbx1.settings import Settings

SECRET_KEY = "ak-7f3c9e51-very-secret"
VALID: dict[str, Any] = {"api_url": "https://api.cbx1.com", "access_key": SECRET_KEY, "org_id": "org-1"}


@pytest.fixture(autouse=True)
def no_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never depend on the developer's environment."""
    monkeypatch.delenv("BASE_URL", raising=False)


def config(**changes: Any) -> dict[str, Any]:
    merged = {**VALID, **changes}
    return {name: value for name, value in merged.items() if value is not ...}


def refused(raw: dict[str, Any]) -> str:
    """The problems of a config the settings refuse, one a line."""
    with pytest.raises(ConfigValidationError) as caught:
        Settings.from_config(raw)
    return "\n".join(caught.value.errors)


def test_defaults_come_from_config_schema() -> None:
    settings = Settings.from_config(VALID)
    assert settings.batch_size == 20
    assert settings.process_as_batch is True
    assert settings.add_stream_key is False
    assert settings.inject_batch_ids is False
    assert settings.max_retries == 5
    assert settings.retry_after_max_seconds == 300
    assert settings.lookup_fields == {}
    assert settings.custom_headers == []
    assert settings.metadata is None
    assert settings.access_token is None
    assert settings.user_agent.startswith("target-cbx1/")


def test_explicit_values_override_defaults() -> None:
    settings = Settings.from_config(config(batch_size=50, process_as_batch=False))
    assert settings.batch_size == 50
    assert settings.process_as_batch is False


def test_hotglue_keys_are_accepted() -> None:
    settings = Settings.from_config(
        {"api_url": "https://api.cbx1.com", "Code": SECRET_KEY, "OrgId": "org-9", "AccessToken": "jwt-abc"}
    )
    assert settings.access_key.get_secret_value() == SECRET_KEY
    assert settings.org_id == "org-9"
    assert settings.access_token is not None
    assert settings.access_token.get_secret_value() == "jwt-abc"


def test_our_names_win_over_hotglue_names() -> None:
    settings = Settings.from_config(
        config(Code="hotglue-code", OrgId="hotglue-org", access_token="ours-jwt", AccessToken="hg-jwt")
    )
    assert settings.access_key.get_secret_value() == SECRET_KEY
    assert settings.org_id == "org-1"
    assert settings.access_token is not None
    assert settings.access_token.get_secret_value() == "ours-jwt"


def test_hotglue_name_used_when_ours_is_empty() -> None:
    settings = Settings.from_config(config(access_key="", Code="hotglue-code"))
    assert settings.access_key.get_secret_value() == "hotglue-code"


def test_base_url_env_var_used_when_api_url_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_URL", "https://eu.cbx1.example")
    assert Settings.from_config(config(api_url=...)).api_url == "https://eu.cbx1.example"


def test_api_url_wins_over_base_url_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_URL", "https://eu.cbx1.example")
    assert Settings.from_config(VALID).api_url == "https://api.cbx1.com"


@pytest.mark.parametrize("url", ["http://api.cbx1.com", "http://10.0.0.5:8080", "http://localhost.evil.com"])
def test_plain_http_refused_for_non_loopback_hosts(url: str) -> None:
    message = refused(config(api_url=url))
    assert "api_url" in message
    assert "https://" in message


def test_plain_http_refused_from_base_url_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASE_URL", "http://api.cbx1.com")
    assert "https://" in refused(config(api_url=...))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:5000/", "http://[::1]:9000", "https://api.cbx1.com/"]
)
def test_loopback_http_and_any_https_accepted(url: str) -> None:
    assert Settings.from_config(config(api_url=url)).api_url == url


@pytest.mark.parametrize("url", ["ftp://api.cbx1.com", "api.cbx1.com", "https://"])
def test_non_http_urls_refused(url: str) -> None:
    assert "api_url" in refused(config(api_url=url))


def test_metadata_json_string_is_parsed() -> None:
    settings = Settings.from_config(config(metadata='{"source": "hubspot", "run": 3}'))
    assert settings.metadata == {"source": "hubspot", "run": 3}


def test_metadata_object_is_kept() -> None:
    assert Settings.from_config(config(metadata={"a": 1})).metadata == {"a": 1}


def test_invalid_metadata_json_refused() -> None:
    message = refused(config(metadata="{source: hubspot"))
    assert "metadata" in message
    assert "JSON" in message


@pytest.mark.parametrize(
    ("field", "alias"), [("access_key", "Code"), ("org_id", "OrgId"), ("api_url", "BASE_URL")]
)
def test_missing_required_field_named_with_its_alias(field: str, alias: str) -> None:
    message = refused(config(**{field: ...}))
    assert f"{field} is required" in message
    assert alias in message


def test_missing_fields_are_all_reported_in_errors_list() -> None:
    with pytest.raises(ConfigValidationError) as caught:
        Settings.from_config({"api_url": "https://api.cbx1.com"})
    assert len(caught.value.errors) == 2
    assert any(error.startswith("access_key") for error in caught.value.errors)
    assert any(error.startswith("org_id") for error in caught.value.errors)


def test_every_problem_is_its_own_entry_in_the_order_found() -> None:
    with pytest.raises(ConfigValidationError) as caught:
        Settings.from_config(
            {"api_url": "http://example.com", "max_concurrency": 100000},
            earlier_problems=["TARGET_CBX1_METADATA is not valid JSON (Expecting value)"],
        )
    assert caught.value.errors == [
        "TARGET_CBX1_METADATA is not valid JSON (Expecting value)",
        "api_url: http://example.com uses plain http://; use https:// (http is accepted only for 127.0.0.1 / "
        "localhost)",
        "access_key is required (HotGlue: Code)",
        "org_id is required (HotGlue: OrgId)",
        "max_concurrency: Input should be less than or equal to 64",
    ]
    assert str(caught.value) == "Invalid target-cbx1 config"


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": "twenty"},
        {"max_retries": -1},
        {"timeout": 0},
        {"metadata": "not json"},
        {"custom_headers": [{"name": "X-Key"}]},
        {"api_url": "http://api.cbx1.com"},
        {"org_id": ["a"]},
    ],
)
def test_access_key_never_appears_in_error_message(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigValidationError) as caught:
        Settings.from_config(config(**bad))
    assert SECRET_KEY not in str(caught.value)
    assert all(SECRET_KEY not in error for error in caught.value.errors)


def test_access_key_of_wrong_type_is_not_echoed() -> None:
    with pytest.raises(ConfigValidationError) as caught:
        Settings.from_config(config(access_key=987654321987))
    assert caught.value.errors == ["access_key: Input should be a valid string"]
    assert "987654321987" not in str(caught.value)
    printed = "".join(traceback.format_exception(caught.value.with_traceback(None)))  # chained errors too
    assert "987654321987" not in printed


def test_access_key_hidden_in_settings_repr() -> None:
    assert SECRET_KEY not in repr(Settings.from_config(VALID))


def test_org_id_given_as_int_becomes_text() -> None:
    assert Settings.from_config(config(org_id=4711)).org_id == "4711"


def test_batch_size_zero_refused() -> None:
    assert "batch_size" in refused(config(batch_size=0))


@pytest.mark.parametrize("field", ["access_key", "org_id"])
def test_empty_required_credential_is_reported_missing(field: str) -> None:
    assert f"{field} is required" in refused(config(**{field: ""}))
