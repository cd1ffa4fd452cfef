"""Keep secrets (access key, session tokens, custom header values, a password in api_url) out of every
log line, error message and written state, in each form they take on the wire.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import typing as t
from urllib.parse import quote, quote_plus

MASK = "***"
_MIN_SECRET_LENGTH = 4
# Query parameters and headers that carry credentials, masked whatever their value.
_CREDENTIAL_PATTERN = re.compile(
    r"(?i)((?:[?&](?:code|access_?key|token)=)|(?:authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?))"
    r"[^&\s\"',]+"
)
# The password of a URL's user info: https://user:password@host
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+(@)")

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
