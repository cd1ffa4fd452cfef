"""Errors the target raises; every message says what happened and what to do, with no secret."""

from __future__ import annotations

from singer_sdk.exceptions import FatalAPIError


class RequestFailedError(Exception):
    """A request did not succeed; its records fail with this message and the run goes on."""


class TransientError(RequestFailedError):
    """A failure worth retrying (408, 429, 5xx, network); retry_after is the server's wish in s."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CredentialsError(FatalAPIError):
    """CBX1 refused the credentials or permissions: the run cannot go on."""
