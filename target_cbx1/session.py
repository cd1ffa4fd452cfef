"""ApiSession: the run's one HTTP session to CBX1 (headers, token, retries, rate limit); knows no contract."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import typing as t
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.structures import CaseInsensitiveDict

from target_cbx1.auth import TOKEN_PATH, SessionTokenAuth, TokenListener
from target_cbx1.errors import (
    ApiOutageError,
    CertificateError,
    CredentialsError,
    RedirectedError,
    RejectedError,
    RequestFailedError,
    StopRequested,
    TransientError,
    UnreachableError,
)
from target_cbx1.ratelimit import RateLimiter
from target_cbx1.redaction import mask, register_secret, replayable_command, replayable_url
from target_cbx1.responses import (
    read_envelope,
    read_within,
    redirect_message,
    require_success,
    server_message,
)
from target_cbx1.retries import Action, RetryPolicy, action_for, parse_retry_after
from target_cbx1.transport import ACCEPT_ENCODING, HostNotFoundError, LeanAdapter

if t.TYPE_CHECKING:
    from target_cbx1.settings import Settings

logger = logging.getLogger("target-cbx1.session")
UNREPLAYED_HEADERS = ("Accept-Encoding", "Connection", "Content-Length")  # curl sets these itself
# A request answered 401 is repeated with a new token up to this many times. More than once: with
# requests in flight, the token one of them was just handed can be revoked by another's 401.
TOKEN_REFRESHES = 3


@dataclass
class RequestCounts:
    """Logical requests made and retries spent, for one stream's summary row."""

    requests: int = 0
    retries: int = 0


class ApiSession:
    """Sends JSON bodies to CBX1 and returns the answer once it is a CM000 envelope; every other
    answer raises (a 2xx whose body is not the envelope is retried first).

    It holds the base URL, the headers, the session token, the retry policy, the shared rate limit
    and the outage count; which endpoint a body goes to and what its `data` means is not its business.
    """

    def __init__(self, settings: Settings, on_new_token: TokenListener | None = None) -> None:
        register_secret(urlsplit(settings.api_url).password)
        for header in settings.custom_headers:
            register_secret(header.value)
        self.base_url = settings.api_url.rstrip("/") + "/"
        self._urls: dict[str, str] = {}  # path -> URL, joined once
        self.timeout = settings.timeout
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": settings.user_agent,
                "x-organisation-id": settings.org_id,
                **{header.name: header.value for header in settings.custom_headers},
            }
        )
        self.policy = RetryPolicy(
            max_retries=settings.max_retries,
            base_seconds=settings.backoff_base_seconds,
            max_seconds=settings.backoff_max_seconds,
            retry_after_max_seconds=settings.retry_after_max_seconds,
        )
        # The environment's proxies and CA bundle are read once, not on every request (that costs
        # more CPU than the rest of a request).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        self.session.verify = (
            settings.ca_bundle
            or os.environ.get("REQUESTS_CA_BUNDLE")
            or os.environ.get("CURL_CA_BUNDLE")
            or True
        )
        self.session.trust_env = False
        # A direct connection costs half the CPU per request through LeanAdapter, which also ends an
        # answer (headers and body) at the timeout. requests' HTTPAdapter speaks to a proxy when one
        # applies: it bounds each read by the timeout, and read_within the body as a whole.
        connections: BaseAdapter = (
            HTTPAdapter(pool_maxsize=max(10, 4 * settings.max_concurrency))
            if requests.utils.select_proxy(self.base_url, self.session.proxies)
            else LeanAdapter()
        )
        self.session.mount("https://", connections)
        self.session.mount("http://", connections)
        self.rate = RateLimiter(settings.max_requests_per_second)
        self.max_failures_in_a_row = settings.max_consecutive_request_failures
        self.failures_in_a_row = 0
        self.gave_up = 0
        self.reached_host = False  # set at the first answer to a POST
        self.outage: ApiOutageError | None = None
        self.stop_signal: str | None = None
        self._stopping = threading.Event()  # wakes every retry wait when the run stops
        self._lock = threading.Lock()
        self._headers = {name: str(value) for name, value in self.session.headers.items()}
        self._replay_headers = {
            **{name: value for name, value in self._headers.items() if name not in UNREPLAYED_HEADERS},
            **{header.name: f"<{header.name} value>" for header in settings.custom_headers},
        }
        # requests looks at a request's cookie jar when it meets a redirect (which it does not follow).
        self._redirect_cookies = requests.cookies.RequestsCookieJar()
        self.auth = SessionTokenAuth(
            self.session,
            self.url(TOKEN_PATH),
            access_key=settings.access_key.get_secret_value(),
            org_id=settings.org_id,
            timeout=settings.timeout,
            token=settings.access_token.get_secret_value() if settings.access_token else None,
            expires_at=settings.expires_in,
            on_new_token=on_new_token,
            replay_headers=self._replay_headers,
        )

    def url(self, path: str) -> str:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = urljoin(self.base_url, path)
        return url

    def post(self, path: str, body: bytes, counts: RequestCounts) -> dict[str, t.Any]:
        """POST a JSON body; return CBX1's whole answer once it is a CM000 envelope, after retries
        and token refreshes. A 2xx whose body is not the envelope is retried as a 5xx is.

        Raises RequestFailedError (the request's records fail, the run goes on; RejectedError when
        CBX1 refused the request as wrong), CredentialsError or ApiOutageError (the run stops), or
        StopRequested (a signal arrived; nothing more is sent).
        """
        with self._lock:
            counts.requests += 1
        delays = self.policy.delays()
        refreshes = 0
        attempts = 0
        while True:
            self.raise_if_stopping()
            attempts += 1
            try:
                token = self.auth.token()
                response = self._post_once(path, body, token)
                self.reached_host = True
                action = action_for(response.status_code)
                if action not in (Action.RETRY, Action.ACCEPT):
                    self.failures_in_a_row = 0  # an answer that is not retried
                if response.status_code == 429:
                    self.rate.slow_down()
                if action is Action.REFRESH_TOKEN and refreshes < TOKEN_REFRESHES:
                    logger.info("CBX1 answered 401 to %s; fetching a new session token", path)
                    self.auth.refresh_after_rejection(token)
                    refreshes += 1
                    continue
                answer, envelope = read_envelope(self._accepted(response, action))
                self.failures_in_a_row = 0
                return require_success(answer, envelope)
            except requests.exceptions.SSLError as exc:
                raise CertificateError(certificate_message(self.base_url, exc)) from None
            except requests.RequestException as exc:
                error = TransientError(describe_network_error(exc, self.timeout))
                unreached = isinstance(exc, requests.ConnectionError) and not self._reached()
                no_such_host = isinstance(exc, HostNotFoundError)
            except TransientError as exc:
                error, unreached, no_such_host = exc, False, False
            backoff = next(delays, None)
            if unreached and (backoff is None or no_such_host):
                message = unreachable_message(self.base_url, str(error), attempts, no_such_host=no_such_host)
                raise self._unreachable(message)
            if backoff is None:
                raise self._gave_up(f"{error} (gave up after {attempts} attempts)")
            wait = self.policy.wait_for(backoff, error.retry_after)
            if wait is None:
                raise self._gave_up(
                    f"{error}; the server asked to retry after {error.retry_after:.0f} s, longer "
                    f"than retry_after_max_seconds ({self.policy.retry_after_max_seconds:.0f} s)"
                )
            if unreached:  # the host never answered: one line, then the retries quietly, then the stop
                level = logging.INFO if attempts == 1 else logging.DEBUG
                logger.log(
                    level, "%s cannot be reached yet (%s); retry %d in %.1f s", path, error, attempts, wait
                )
            else:
                logger.warning("%s failed (%s); retry %d in %.1f s", path, error, attempts, wait)
            with self._lock:
                counts.retries += 1
            self._wait(wait)

    def stop(self, reason: str) -> None:
        """Stop the run: nothing new is sent, and requests waiting to retry stop waiting."""
        if self.stop_signal is None:
            self.stop_signal = reason
        self._stopping.set()

    def _wait(self, seconds: float) -> None:
        """Wait before a retry, unless the run stops first."""
        self._stopping.wait(seconds)

    def _post_once(self, path: str, body: bytes, token: str) -> requests.Response:
        """One HTTP attempt, within the rate limit.

        The request is prepared by hand and sent without redirects: the API sends none, and skipping
        requests' generic preparation saves a third of the CPU a request costs.
        """
        self.rate.acquire()
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self.url(path)
        request.headers = CaseInsensitiveDict(
            {**self._headers, "Authorization": f"Bearer {token}", "Content-Length": str(len(body))}
        )
        request.body = body
        request.hooks = {"response": []}
        request._cookies = self._redirect_cookies  # type: ignore[attr-defined]  # read on a redirect
        deadline = time.monotonic() + self.timeout
        try:
            response = self.session.send(request, timeout=self.timeout, allow_redirects=False, stream=True)
            read_within(response, deadline, self.timeout)
        except requests.RequestException as exc:
            if logger.isEnabledFor(logging.DEBUG):
                self._log_replay(path, body, type(exc).__name__)
            raise
        if not 200 <= response.status_code < 300 and logger.isEnabledFor(logging.DEBUG):
            self._log_replay(path, body, f"HTTP {response.status_code}")
        return response

    def _log_replay(self, path: str, body: bytes, outcome: str) -> None:
        """Log a failed attempt as a cURL command, its secrets replaced with <placeholders>."""
        command = replayable_command(
            "POST", replayable_url(self.url(path)), self._replay_headers, body, "<session token>"
        )
        logger.debug(
            "POST %s failed (%s); to replay it, fill in the <placeholders>: %s", path, outcome, command
        )

    def raise_if_stopping(self) -> None:
        """Before anything new is read or sent: stop for a signal (or a fatal error), or an outage."""
        if self.stop_signal is not None:
            raise StopRequested(self.stop_signal)
        if self.outage is not None:
            raise ApiOutageError(str(self.outage), request_error=None)

    def _reached(self) -> bool:
        """Whether the API's host has given an HTTP answer in this run (to the token request or a POST)."""
        return self.reached_host or self.auth.answered

    def _unreachable(self, message: str) -> UnreachableError:
        """The error that stops the run when the host never answered; other requests stop with it."""
        with self._lock:
            if self.outage is None:
                self.outage = ApiOutageError(message, request_error=message)
        self._stopping.set()
        return UnreachableError(message)

    def _gave_up(self, message: str) -> RequestFailedError | ApiOutageError:
        """The error for a request whose retries are spent: an outage once too many failed in a row."""
        with self._lock:
            self.failures_in_a_row += 1
            self.gave_up += 1
            failures = self.failures_in_a_row
        logger.error("Request failed after its retries: %s", message)
        if failures < self.max_failures_in_a_row:
            return RequestFailedError(message)
        self.outage = ApiOutageError(
            f"CBX1 looks down: {failures} requests in a row failed after all their "
            f"retries (last: {message}). The run stopped; the state of what was written is printed. "
            "Rerun the job once the API answers again: records that were not sent will be sent then.",
            request_error=message,
        )
        self._stopping.set()
        return self.outage

    @staticmethod
    def _accepted(response: requests.Response, action: Action) -> requests.Response:
        """The answer when it is a 2xx; otherwise the error its status stands for."""
        status = response.status_code
        if action is Action.ACCEPT:
            return response
        if action is Action.REDIRECT:
            raise RedirectedError(redirect_message(response))
        message = server_message(response)
        if action is Action.RETRY:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientError(f"HTTP {status}: {message}", retry_after=retry_after)
        if action is Action.REFRESH_TOKEN:
            raise CredentialsError(
                f"CBX1 rejected a freshly issued session token (HTTP 401: {message}), "
                f"{TOKEN_REFRESHES} times in a row. Check that access_key and org_id belong to the "
                "same organisation."
            )
        if action is Action.DENY:
            raise CredentialsError(
                f"CBX1 refused the request (HTTP 403: {message}). Check access_key and org_id: the "
                "access key lacks permission for this organisation or endpoint; ask a CBX1 admin to grant it."
            )
        raise RejectedError(f"CBX1 rejected the request (HTTP {status}: {message})", status, message)


def certificate_message(base_url: str, exc: requests.exceptions.SSLError) -> str:
    """What a failed TLS verification means, and how to trust a private CA; never how to turn it off."""
    reason = re.search(r"certificate verify failed: ([^(]+)", str(exc))
    detail = reason.group(1).strip() if reason else mask(str(exc))[:200]
    return (
        f"The TLS certificate of {urlsplit(base_url).netloc} could not be verified ({detail}), so the "
        "run stopped before sending anything more. If CBX1 is reached through a proxy or a private "
        "certificate authority, set ca_bundle (or the environment variable REQUESTS_CA_BUNDLE) to "
        "that authority's certificate file; verification is never turned off."
    )


def unreachable_message(base_url: str, detail: str, attempts: int, *, no_such_host: bool) -> str:
    """The one line a run stops with when the API's host never answered, and what to check."""
    parts = urlsplit(base_url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    if no_such_host:
        what = f"the host name {parts.hostname} does not resolve (DNS)"
    elif "refused" in detail.lower():
        what = f"{host} refused the connection"
    else:
        what = f"{host} did not answer ({detail})"
    tries = "" if attempts == 1 else f" in {attempts} attempts"
    return (
        f"Cannot reach the CBX1 API: {what}{tries}, so nothing was sent. Check api_url (the API's base URL, "
        "such as https://api.cbx1.com), the network, and the proxy settings (HTTPS_PROXY, NO_PROXY)."
    )


def describe_network_error(exc: requests.RequestException, timeout: float) -> str:
    """A short, secret-free account of a failure below HTTP."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within the {timeout:g} s timeout"
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed: {mask(str(exc))}"
    return f"request failed: {mask(str(exc))}"
