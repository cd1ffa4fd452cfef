"""Pydantic models of the CBX1 responses the target reads (extra fields are ignored)."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, Field

SUCCESS_CODE = "CM000"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class Status(_Lenient):
    """The envelope's status: code CM000 means success."""

    code: str
    message: str = ""


class Envelope(_Lenient):
    """Every CBX1 answer: {"status": {...}, "data": ...}."""

    status: Status
    data: t.Any = None

    @property
    def ok(self) -> bool:
        return self.status.code == SUCCESS_CODE


class SessionToken(_Lenient):
    """`data` of the auth endpoint."""

    session_token: str = Field(alias="sessionToken", min_length=1)
    max_age: t.Any = Field(default=None, alias="maxAge")  # read by auth.lifetime_of, whatever it holds


class ResultsData(_Lenient):
    """`data` of an answer with per-record results; each result is read on its own."""

    results: list[t.Any] = []


class BulkResult(_Lenient):
    """One record's outcome in a /bulk answer; only the JSON literal true is a success."""

    success: t.Any = None
    id: str | None = None
    lookup_key: str | None = Field(default=None, alias="lookupKey")
    error: t.Any = None
    updated: t.Any = False


class UpsertData(_Lenient):
    """`data` of an /upsert answer."""

    success: t.Any = None
    id: str | None = None
    error: t.Any = None
    updated: t.Any = False


class IngestionResult(_Lenient):
    """One record's outcome in an answer of the unified records endpoint."""

    status: t.Any = None
    entity_id: str | None = Field(default=None, alias="entityId")
    lookup_key: str | None = Field(default=None, alias="lookupKey")
    error: t.Any = None
