"""Errors the target raises; every message says what happened and what to do, with no secret."""

from __future__ import annotations

from singer_sdk.exceptions import FatalAPIError


class RequestFailedError(Exception):
    """A request did not succeed; its records fail with this message and the run goes on."""


class RejectedError(RequestFailedError):
    """CBX1 refused the request as wrong (400, 404, 405, 422...); repeating it would not help.

    `server_message` is CBX1's own words, for telling whether they name a record or the request.
    """

    def __init__(self, message: str, status: int, server_message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class EndpointMissingError(RequestFailedError):
    """CBX1 has no endpoint at a path (404/405): every request to it fails, without being sent again.

    `repeated`: the path was already known to be missing, so nothing new is to be logged.
    """

    def __init__(self, message: str, *, repeated: bool) -> None:
        super().__init__(message)
        self.repeated = repeated


class TransientError(RequestFailedError):
    """A failure worth retrying (408, 429, 5xx, network); retry_after is the server's wish in s."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CredentialsError(FatalAPIError):
    """CBX1 refused the credentials or permissions: the run cannot go on."""


class RedirectedError(FatalAPIError):
    """CBX1 (or a proxy) answered with a redirect: every request would, so the run stops."""


class UnreachableError(FatalAPIError):
    """The API's host never answered (refused, unknown name): api_url, the network or a proxy is wrong."""


class ApiUrlError(FatalAPIError):
    """The token endpoint is not where api_url says (404/405): api_url is not the API's base URL."""


class CertificateError(FatalAPIError):
    """The API's TLS certificate could not be verified: every request would fail the same way."""


class ApiOutageError(FatalAPIError):
    """Too many requests in a row failed after all their retries: the API looks down, the run stops.

    `request_error` is the failing request's own error; None for a request stopped before it was sent.
    """

    def __init__(self, message: str, request_error: str | None) -> None:
        super().__init__(message)
        self.request_error = request_error


class StopRequested(BaseException):
    """A signal asked the run to stop; a BaseException so that no error handler swallows it."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
