"""The flat-record contract: chunks to /targets/{stream}/bulk, single records to /targets/{stream}/upsert."""

from __future__ import annotations

import typing as t
from urllib.parse import quote

from target_cbx1.contracts.base import Contract, Normaliser, Outcome, Payload, read_data
from target_cbx1.models import BulkData, UpsertData

if t.TYPE_CHECKING:
    from collections.abc import Sequence


def target_path(stream: str, endpoint: str) -> str:
    """The API path of a stream's /bulk or /upsert endpoint (the stream name URL-quoted)."""
    return f"api/t/v1/targets/{quote(stream, safe='')}/{endpoint}"


class BulkContract(Contract):
    """A JSON array of flat records per request; results `{success, id, lookupKey, error}` in data.results."""

    def __init__(self, stream: str, normalise: Normaliser) -> None:
        super().__init__(normalise)
        self.bulk_path = target_path(stream, "bulk")
        self.upsert_path = target_path(stream, "upsert")

    def batch_path(self, payload: Payload) -> str:
        return self.bulk_path

    def batch_body(self, payloads: Sequence[Payload]) -> t.Any:
        return list(payloads)

    def batch_outcomes(self, path: str, data: t.Any, keys: Sequence[str]) -> list[Outcome]:
        results = read_data(BulkData, path, data).results
        return self.match_by_key(
            keys,
            (
                (
                    result.lookup_key,
                    Outcome(True, result.id, updated=result.updated)
                    if result.success
                    else Outcome(
                        False, error=f"CBX1 rejected the record: {result.error or '(no reason given)'}"
                    ),
                )
                for result in results
            ),
        )

    def single_path(self, payload: Payload) -> str:
        return self.upsert_path

    def single_body(self, payload: Payload) -> t.Any:
        return payload

    def single_outcome(self, path: str, data: t.Any, key: str) -> Outcome:
        answer = read_data(UpsertData, path, data)
        return Outcome(True, answer.id, updated=answer.updated)
