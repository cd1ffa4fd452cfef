"""Keep secrets (access key, session tokens) out of every log line and error message."""

from __future__ import annotations

import logging
import re
import threading
import typing as t

MASK = "***"
_MIN_SECRET_LENGTH = 4
# Query parameters and headers that carry credentials, masked whatever their value.
_CREDENTIAL_PATTERN = re.compile(
    r"(?i)((?:[?&](?:code|access_?key|token)=)|(?:authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?))"
    r"[^&\s\"',]+"
)

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a value that must never be printed."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def mask(text: str) -> str:
    """Return text with every known secret and credential parameter replaced by ***."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
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
