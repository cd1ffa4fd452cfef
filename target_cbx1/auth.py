"""Session tokens: the access key is exchanged for a token, reused, refreshed before expiry or after a 401."""

from __future__ import annotations

import threading
import time
import typing as t

import requests
from pydantic import ValidationError

from target_cbx1.errors import CredentialsError, RequestFailedError, TransientError
from target_cbx1.models import SessionToken
from target_cbx1.redaction import register_secret
from target_cbx1.responses import read_envelope_data, server_message
from target_cbx1.retries import Action, action_for, parse_retry_after

TOKEN_PATH = "api/g/v1/auth/tokens"
REFRESH_MARGIN_SECONDS = 120  # HotGlue's rule: refresh when fewer than this many seconds remain

TokenListener = t.Callable[[str, float], None]


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
    ) -> None:
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
        self._lock = threading.Lock()

    def token(self) -> str:
        """A token valid for at least REFRESH_MARGIN_SECONDS more (fetched when needed)."""
        with self._lock:
            if self._token is None or self._expires_soon():
                self._fetch()
            assert self._token is not None
            return self._token

    def refresh_after_rejection(self, rejected_token: str) -> None:
        """Replace a token the API answered 401 to, unless another thread already did."""
        with self._lock:
            if self._token == rejected_token:
                self._fetch()

    def _expires_soon(self) -> bool:
        return self._expires_at is not None and self._expires_at - self._clock() < REFRESH_MARGIN_SECONDS

    def _fetch(self) -> None:
        params = {"authenticationType": "ACCESS_KEY", "code": self._access_key, "orgId": self._org_id}
        response = self._session.get(self._token_url, params=params, timeout=self._timeout)
        action = action_for(response.status_code)
        if action is Action.RETRY:
            raise TransientError(
                f"the token endpoint answered HTTP {response.status_code}: {server_message(response)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if action is not Action.ACCEPT:
            raise self._failed(f"HTTP {response.status_code}: {server_message(response)}")
        try:
            issued = SessionToken.model_validate(read_envelope_data(response))
        except RequestFailedError as exc:
            raise self._failed(str(exc)) from None
        except ValidationError:
            raise self._failed(f"unreadable answer: {server_message(response)}") from None
        register_secret(issued.session_token)
        self._token = issued.session_token
        self._expires_at = self._clock() + issued.max_age
        if self._on_new_token is not None:
            self._on_new_token(self._token, self._expires_at)

    def _failed(self, detail: str) -> CredentialsError:
        return CredentialsError(
            f"CBX1 authentication failed ({detail}). Check access_key (HotGlue: Code) and "
            f"org_id (HotGlue: OrgId, here {self._org_id!r}) in the config."
        )
