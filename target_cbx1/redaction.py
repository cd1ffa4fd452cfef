"""Keep secrets (access key, session tokens, custom header values, a password in api_url) out of every
log line, error message and written state, in each form they take on the wire.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import typing as t
from urllib.parse import quote, quote_plus, urlsplit

MASK = "***"
_MIN_SECRET_LENGTH = 4
REPLAY_BODY_LIMIT = 10_000  # characters of a body a replayable command holds
_NOT_A_PLACEHOLDER = r"(?!(?:bearer\s+)?<[\w .\-]+>)"  # a replayable command's <placeholder> stays
# Query parameters and headers that carry credentials, masked whatever their value.
_CREDENTIAL_PATTERN = re.compile(
    r"(?i)((?:[?&](?:code|access_?key|token)=)|(?:authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?))"
    + _NOT_A_PLACEHOLDER
    + r"[^&\s\"',]+"
)
# The password of a URL's user info: https://user:password@host
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)" + _NOT_A_PLACEHOLDER + r"[^/\s@]+(@)")

_secrets: set[str] = set()
_longest_first: list[str] = []
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a value that must never be printed, with its URL-encoded and JSON-escaped forms."""
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    global _longest_first
    with _lock:
        _secrets.update(forms)
        _longest_first = sorted(_secrets, key=len, reverse=True)


def mask(text: str) -> str:
    """Return text with every known secret (in each of its forms), credential parameter and URL
    password replaced by ***.
    """
    for secret in _longest_first:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda match: match.group(1) + MASK + match.group(2), text)
    return _CREDENTIAL_PATTERN.sub(lambda match: match.group(1) + MASK, text)


def shell_quoted(text: str) -> str:
    """Text as one single-quoted POSIX shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def replayable_url(url: str) -> str:
    """The URL with the password of its user info (if any) replaced by a placeholder."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:<api_url password>@{parts.netloc.rpartition('@')[2]}"
    return parts._replace(netloc=netloc).geturl()


def replayable_command(
    method: str,
    url: str,
    headers: t.Mapping[str, str],
    body: bytes | None = None,
    bearer: str | None = None,
) -> str:
    """A cURL command replaying a request whose secrets the caller replaced with <placeholders>
    (`bearer`: the Authorization token's); it is masked as well, and a body longer than
    REPLAY_BODY_LIMIT is cut, with a comment saying so.
    """
    words = ["curl", "-X", method, shell_quoted(url)]
    for name, value in headers.items():
        words += ["-H", shell_quoted(f"{name}: {value}")]
    if bearer is not None:  # curl sends it as Authorization: Bearer ...
        words += ["--oauth2-bearer", shell_quoted(bearer)]
    note = ""
    if body is not None:
        text = body.decode("utf-8", errors="replace")
        if len(text) > REPLAY_BODY_LIMIT:
            note = (
                f"  # body cut after {REPLAY_BODY_LIMIT:,} characters: {len(text) - REPLAY_BODY_LIMIT:,} "
                "more were left out"
            )
            text = text[:REPLAY_BODY_LIMIT]
        words += ["--data-raw", shell_quoted(text)]
    return mask(" ".join(words)) + note


def install_log_masking() -> None:
    """Mask secrets in every log record of every logger (urllib3's DEBUG lines included)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "masks_secrets", False):
        return

    def masking_factory(*args: t.Any, **kwargs: t.Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: logging reports it, with masked arguments
            record.msg = mask(str(record.msg))
            if isinstance(record.args, tuple):
                record.args = tuple(mask(str(arg)) for arg in record.args)
            return record
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        return record

    masking_factory.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masking_factory)
