"""Session tokens: the access key is exchanged for a token, reused, refreshed before expiry or after a 401."""

from __future__ import annotations

import decimal
import logging
import math
import threading
import time
import typing as t
from urllib.parse import quote

import requests
from pydantic import ValidationError

from target_cbx1.errors import ApiUrlError, CredentialsError, RedirectedError, TransientError
from target_cbx1.jsonio import json_kind
from target_cbx1.models import SUCCESS_CODE, SessionToken
from target_cbx1.redaction import mask, register_secret, replayable_command, replayable_url
from target_cbx1.responses import decode_leniently, read_within, redirect_message, server_message
from target_cbx1.retries import Action, action_for, parse_retry_after

TOKEN_PATH = "api/g/v1/auth/tokens"
REFRESH_MARGIN_SECONDS = 120  # HotGlue's rule: refresh when fewer than this many seconds remain
LONGEST_LIFETIME_SECONDS = 86400.0  # a longer maxAge is taken as a day: a token is refetched at least daily

TokenListener = t.Callable[[str, "float | None"], None]
logger = logging.getLogger("target-cbx1.auth")


class SessionTokenAuth:
    """Holds the run's one session token; thread-safe, so concurrent 401s refresh it once."""

    def __init__(
        self,
        session: requests.Session,
        token_url: str,
        *,
        access_key: str,
        org_id: str,
        timeout: float,
        token: str | None = None,
        expires_at: float | None = None,
        on_new_token: TokenListener | None = None,
        clock: t.Callable[[], float] = time.time,
        replay_headers: t.Mapping[str, str] | None = None,
    ) -> None:
        """`replay_headers`: the headers a failed token request is logged with at DEBUG, as a cURL
        command (the secret ones as <placeholders>).
        """
        register_secret(access_key)
        register_secret(token)
        self._session = session
        self._token_url = token_url
        self._access_key = access_key
        self._org_id = org_id
        self._timeout = timeout
        self._token = token
        self._expires_at = expires_at
        self._on_new_token = on_new_token
        self._clock = clock
        self._replay_headers = replay_headers or {}
        self._lifetime: float | None = None
        self._lock = threading.Lock()
        self.answered = False  # the token endpoint gave an HTTP answer (the host is reachable)

    def token(self) -> str:
        """A token valid for at least REFRESH_MARGIN_SECONDS more (fetched when needed)."""
        with self._lock:
            if self._token is None or self._expires_soon():
                self._fetch()
            assert self._token is not None
            return self._token

    def fetch(self) -> None:
        """Fetch a new token now, whatever token is held (for `--check`)."""
        with self._lock:
            self._fetch()

    def refresh_after_rejection(self, rejected_token: str) -> None:
        """Replace a token the API answered 401 to, unless another thread already did."""
        with self._lock:
            if self._token == rejected_token:
                self._fetch()

    def _expires_soon(self) -> bool:
        return self._expires_at is not None and self._expires_at - self._clock() < self._margin

    @property
    def _margin(self) -> float:
        """HotGlue's 120 s, or a tenth of a short token's lifetime (never a fetch per request)."""
        return min(REFRESH_MARGIN_SECONDS, self._lifetime / 10) if self._lifetime else REFRESH_MARGIN_SECONDS

    def _fetch(self) -> None:
        params = {"authenticationType": "ACCESS_KEY", "code": self._access_key, "orgId": self._org_id}
        deadline = time.monotonic() + self._timeout
        try:
            response = self._session.get(
                self._token_url, params=params, timeout=self._timeout, allow_redirects=False, stream=True
            )
            self.answered = True
            read_within(response, deadline, self._timeout)
        except requests.RequestException as exc:
            self._log_replay(type(exc).__name__)
            raise
        if not 200 <= response.status_code < 300:
            self._log_replay(f"HTTP {response.status_code}")
        action = action_for(response.status_code)
        if action is Action.REDIRECT:
            raise RedirectedError(redirect_message(response))
        if response.status_code in (404, 405):
            raise ApiUrlError(
                f"CBX1 has no token endpoint at {mask(self._token_url)} (HTTP "
                f"{response.status_code}: {server_message(response)}). Check api_url: it must be the API's "
                "base URL, such as https://api.cbx1.com, with no path (no /api/t/v1) below it."
            )
        if action is Action.RETRY:
            raise TransientError(
                f"the token endpoint answered HTTP {response.status_code}: {server_message(response)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if action is not Action.ACCEPT:
            raise self._failed(f"HTTP {response.status_code}: {server_message(response)}")
        issued = self._issued(response)
        register_secret(issued.session_token)
        self._token = issued.session_token
        self._lifetime = lifetime_of(issued.max_age)
        self._expires_at = None if self._lifetime is None else self._clock() + self._lifetime
        if self._on_new_token is not None:
            self._on_new_token(self._token, self._expires_at)

    def _log_replay(self, outcome: str) -> None:
        """At DEBUG, log the failed token request as a cURL command, the access key as <access key>."""
        if not logger.isEnabledFor(logging.DEBUG):
            return
        query = f"authenticationType=ACCESS_KEY&code=<access key>&orgId={quote(self._org_id, safe='')}"
        url = f"{replayable_url(self._token_url)}?{query}"
        command = replayable_command("GET", url, self._replay_headers)
        logger.debug(
            "The token request failed (%s); to replay it, fill in the <placeholders>: %s", outcome, command
        )

    def _issued(self, response: requests.Response) -> SessionToken:
        """The token a 2xx answer holds. An answer that holds none is described by its shape only:
        it may carry a token or the key, and it is never quoted.
        """
        try:
            answer = decode_leniently(response.content)
        except (ValueError, RecursionError):
            answer = None
        status = answer.get("status") if isinstance(answer, dict) else None
        if not isinstance(status, dict):
            raise self._failed(
                f"HTTP {response.status_code} with an answer that is not the documented JSON envelope"
            )
        if status.get("code") != SUCCESS_CODE:
            message = mask(str(status.get("message") or "(no message)"))
            raise self._failed(f"status {mask(str(status.get('code')))}: {message}")
        data = answer.get("data") if isinstance(answer, dict) else None
        try:
            return SessionToken.model_validate(data)
        except ValidationError:
            shape = (
                ", ".join(f"{key} ({json_kind(value)})" for key, value in data.items())
                if isinstance(data, dict)
                else json_kind(data)
            )
            raise self._failed(
                f"the token answer has no usable sessionToken; its data holds {shape or 'nothing'}"
            ) from None

    def _failed(self, detail: str) -> CredentialsError:
        return CredentialsError(
            f"CBX1 authentication failed ({detail}). Check access_key (HotGlue: Code) and "
            f"org_id (HotGlue: OrgId, here {self._org_id!r}) in the config."
        )


def lifetime_of(max_age: object) -> float | None:
    """Seconds a token lives, from its maxAge; None (refreshed only after a 401) when maxAge is not a
    positive finite number. A lifetime over a day counts as a day.
    """
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float, decimal.Decimal)):
        return None
    try:
        seconds = float(max_age)
    except (OverflowError, ValueError):
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return LONGEST_LIFETIME_SECONDS if seconds == math.inf else None
    return min(seconds, LONGEST_LIFETIME_SECONDS)
