"""Unit tests for target_cbx1.redaction: secrets never reach a log line or error message."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from target_cbx1 import redaction
from target_cbx1.redaction import MASK, install_log_masking, mask, register_secret

ACCESS_KEY = "ak-51f0c2-TOP-secret"
SESSION_TOKEN = "eyJhbGciOiJIUzI1NiJ9.payload.signature"


@pytest.fixture(autouse=True)
def clean_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no registered secret and leaves none behind."""
    monkeypatch.setattr(redaction, "_secrets", set())


@pytest.fixture
def masking() -> Iterator[None]:
    """Install log masking; the original (global) record factory is restored afterwards."""
    original_factory = logging.getLogRecordFactory()
    install_log_masking()
    try:
        yield
    finally:
        logging.setLogRecordFactory(original_factory)


@pytest.fixture
def masked_logger(masking: None) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing to a StringIO, with masking installed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


# --- mask -------------------------------------------------------------------------------------------


def test_mask_removes_registered_secret() -> None:
    register_secret(ACCESS_KEY)
    assert mask(f"auth failed for key {ACCESS_KEY}!") == f"auth failed for key {MASK}!"


def test_mask_removes_every_occurrence_of_several_secrets() -> None:
    register_secret(ACCESS_KEY)
    register_secret(SESSION_TOKEN)
    masked = mask(f"{ACCESS_KEY} {SESSION_TOKEN} {ACCESS_KEY}")
    assert ACCESS_KEY not in masked
    assert SESSION_TOKEN not in masked
    assert masked == f"{MASK} {MASK} {MASK}"


def test_mask_leaves_text_without_secrets_alone() -> None:
    register_secret(ACCESS_KEY)
    line = "POST /api/t/v1/targets/accounts/bulk -> 200"
    assert mask(line) == line


def test_too_short_values_are_not_registered() -> None:
    register_secret("abc")
    register_secret(None)
    assert mask("abc abcd") == "abc abcd"


def test_mask_hides_code_query_parameter_even_if_unregistered() -> None:
    url = (
        "GET https://api.cbx1.com/api/g/v1/auth/tokens?authenticationType=ACCESS_KEY&code=unknown-key&orgId=7"
    )
    masked = mask(url)
    assert "unknown-key" not in masked
    assert "code=***&orgId=7" in masked
    assert "authenticationType=ACCESS_KEY" in masked


@pytest.mark.parametrize(
    "text", ["/x?token=abc.def.ghi", "/x?a=1&TOKEN=abc.def.ghi&b=2", "/x?accessKey=abc.def.ghi"]
)
def test_mask_hides_token_and_access_key_parameters(text: str) -> None:
    assert "abc.def.ghi" not in mask(text)


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def.ghi",
        "authorization: bearer abc.def.ghi",
        "{'Authorization': 'Bearer abc.def.ghi', 'x-organisation-id': '7'}",
        '{"Authorization": "Bearer abc.def.ghi"}',
    ],
)
def test_mask_hides_bearer_authorization_values(text: str) -> None:
    masked = mask(text)
    assert "abc.def.ghi" not in masked
    assert MASK in masked


def test_mask_keeps_header_dict_readable() -> None:
    masked = mask("{'Authorization': 'Bearer abc.def.ghi', 'x-organisation-id': '7'}")
    assert masked == "{'Authorization': 'Bearer ***', 'x-organisation-id': '7'}"


# --- install_log_masking ----------------------------------------------------------------------------


def test_log_message_with_secret_is_masked(masked_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = masked_logger
    register_secret(ACCESS_KEY)
    logger.info(f"using key {ACCESS_KEY}")
    assert ACCESS_KEY not in stream.getvalue()
    assert f"using key {MASK}" in stream.getvalue()


def test_secret_in_log_args_is_masked(masked_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = masked_logger
    register_secret(ACCESS_KEY)
    logger.warning("GET %s failed with %d", f"/auth?x={ACCESS_KEY}", 401)
    output = stream.getvalue()
    assert ACCESS_KEY not in output
    assert "failed with 401" in output


def test_credential_parameters_masked_in_logs(masked_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = masked_logger
    logger.debug('"GET /api/g/v1/auth/tokens?authenticationType=ACCESS_KEY&code=%s HTTP/1.1" 200', "raw-key")
    assert "raw-key" not in stream.getvalue()
    assert "code=***" in stream.getvalue()


def test_secret_in_exception_traceback_is_masked(masked_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = masked_logger
    register_secret(SESSION_TOKEN)
    try:
        raise RuntimeError(f"rejected token {SESSION_TOKEN}")
    except RuntimeError:
        logger.exception("request failed")
    output = stream.getvalue()
    assert "Traceback" in output
    assert "RuntimeError: rejected token ***" in output
    assert SESSION_TOKEN not in output


@pytest.mark.usefixtures("masking")
def test_masking_applies_to_caplog(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(ACCESS_KEY)
    with caplog.at_level(logging.INFO):
        logging.getLogger("target_cbx1.probe").info("key=%s", ACCESS_KEY)
    assert ACCESS_KEY not in caplog.text
    assert caplog.records[0].getMessage() == f"key={MASK}"


def test_secret_registered_after_install_is_still_masked(
    masked_logger: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = masked_logger
    logger.info("before registration")
    register_secret(ACCESS_KEY)
    logger.info("late %s", ACCESS_KEY)
    assert ACCESS_KEY not in stream.getvalue()


@pytest.mark.usefixtures("masking")
def test_install_log_masking_is_idempotent() -> None:
    factory = logging.getLogRecordFactory()
    install_log_masking()
    assert logging.getLogRecordFactory() is factory


def test_messages_without_secrets_keep_their_args(masked_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = masked_logger
    register_secret(ACCESS_KEY)
    logger.info("sent %d records to %s", 20, "accounts")
    assert "sent 20 records to accounts" in stream.getvalue()


def test_malformed_log_call_does_not_raise(
    masked_logger: tuple[logging.Logger, io.StringIO], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, _ = masked_logger
    monkeypatch.setattr(logging, "raiseExceptions", False)
    logger.warning("%d records", "twenty")


def test_malformed_log_call_does_not_leak_secret_to_stderr(
    masked_logger: tuple[logging.Logger, io.StringIO],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger, stream = masked_logger
    monkeypatch.setattr(logger, "propagate", False)  # pytest's own capture handler re-raises logging errors
    register_secret(ACCESS_KEY)
    logger.warning("%d records for key %s", "twenty", ACCESS_KEY)
    printed = capsys.readouterr().err + stream.getvalue()
    assert "Logging error" in printed  # logging did report the bad call
    assert ACCESS_KEY not in printed
