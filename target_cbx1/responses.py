"""Reading CBX1 answers: the envelope, and a short server message for errors (HTML and empty bodies too)."""

from __future__ import annotations

import json
import re
import time
import typing as t
from urllib.parse import urlsplit

import requests
import urllib3
from pydantic import ValidationError

from target_cbx1 import jsonio
from target_cbx1.errors import RequestFailedError, TransientError
from target_cbx1.models import Envelope
from target_cbx1.redaction import mask

QUOTE_LENGTH = 200
_TAG = re.compile(r"<[^>]*>")
_HIDDEN = re.compile(r"<(head|script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def body_start(response: requests.Response) -> str:
    """The first characters of a body as readable text (head, scripts and tags dropped, secrets masked)."""
    text = response.text or ""
    if "<" in text and ">" in text:
        text = _TAG.sub(" ", _HIDDEN.sub(" ", text))
    text = _SPACE.sub(" ", text).strip()
    if not text:
        return "(empty body)"
    quoted = text[:QUOTE_LENGTH] + ("..." if len(text) > QUOTE_LENGTH else "")
    return mask(quoted)


def server_message(response: requests.Response) -> str:
    """The server's own words: status.message / message / error of a JSON body, else its start."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return body_start(response)
    if isinstance(body, dict):
        status = body.get("status")
        candidates = [status.get("message") if isinstance(status, dict) else None]
        candidates += [body.get("message"), body.get("error"), body.get("detail")]
        for candidate in candidates:
            if isinstance(candidate, str) and candidate.strip():
                return mask(candidate.strip())
    return body_start(response)


def read_envelope(response: requests.Response) -> tuple[dict[str, t.Any], Envelope]:
    """The whole JSON answer of a 2xx and its envelope.

    Raises TransientError, quoting the body, when it is not the envelope: an HTML page or a broken
    body from a proxy on the way is worth another try (an upsert is safe to repeat).
    """
    try:
        answer = decode_leniently(response.content)
        envelope = Envelope.model_validate(answer)
    except (ValueError, RecursionError, ValidationError):
        raise TransientError(
            f"CBX1 answered HTTP {response.status_code} with a body that is not the documented "
            f"JSON envelope: {body_start(response)!r}"
        ) from None
    return t.cast("dict[str, t.Any]", answer), envelope


def require_success(answer: dict[str, t.Any], envelope: Envelope) -> dict[str, t.Any]:
    """The answer, when its envelope's status is CM000; else RequestFailedError with CBX1's message."""
    if not envelope.ok:
        raise RequestFailedError(
            f"CBX1 refused the request: status {envelope.status.code}: "
            f"{mask(envelope.status.message) or '(no message)'}"
        )
    return answer


def decode_leniently(content: bytes) -> t.Any:
    """JSON, fast; with Python's reader as a fallback for the NaN and Infinity some servers write."""
    try:
        return jsonio.decode(content)
    except (jsonio.DecodeError, RecursionError):
        return json.loads(content)


def read_within(response: requests.Response, deadline: float, timeout: float) -> None:
    """Read a streamed answer's body, so that `timeout` bounds the whole answer, not each read:
    a server that trickles its answer byte by byte is given up on at the deadline.
    """
    chunks = []
    try:
        while True:
            chunk = response.raw.read1(65536, decode_content=True)
            if time.monotonic() > deadline:  # after every read, the last (empty) one included
                raise requests.Timeout(f"the answer took longer than the {timeout:g} s timeout")
            if not chunk:
                break
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError as exc:
        response.close()
        raise requests.Timeout(str(exc)) from None
    except urllib3.exceptions.HTTPError as exc:
        response.close()
        raise requests.ConnectionError(f"the answer broke off: {exc}") from None
    except BaseException:
        response.close()
        raise
    response._content = b"".join(chunks)
    response.raw.release_conn()


def redirect_message(response: requests.Response) -> str:
    """What a redirect means for the user, naming where it points (without its query)."""
    location = response.headers.get("Location") or "(no Location header)"
    parts = urlsplit(location)
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path or location
    return (
        f"CBX1 answered HTTP {response.status_code}, a redirect to {mask(shown)}: the target never "
        "follows redirects with its credentials. Set api_url to the API's final address (the "
        "scheme and host the redirect names), then rerun."
    )
