"""The flat-record contract: chunks to /targets/{stream}/bulk, single records to /targets/{stream}/upsert."""

from __future__ import annotations

import typing as t
from urllib.parse import quote

from target_cbx1.contracts.base import Contract, Normaliser, Outcome, Payload, read_data, read_results, reason
from target_cbx1.models import BulkResult, UpsertData

if t.TYPE_CHECKING:
    from collections.abc import Sequence


def target_path(stream: str, endpoint: str) -> str:
    """The API path of a stream's /bulk or /upsert endpoint; the stream name is a plain word
    (streams.py routes no other here), quoted all the same.
    """
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
        results = read_results(BulkResult, path, data)
        return self.match_by_key(keys, ((result.lookup_key, outcome_of(result)) for result in results))

    def single_path(self, payload: Payload) -> str:
        return self.upsert_path

    def single_body(self, payload: Payload) -> t.Any:
        return payload

    def single_outcome(self, path: str, data: t.Any, key: str) -> Outcome:
        """A success needs CBX1's id; `success` other than true, or no id, fails the record."""
        if not isinstance(data, dict):
            return Outcome(False, error=f"CBX1 answered {path} but returned no id for the record (no data)")
        answer = read_data(UpsertData, path, data)
        if "success" in answer.model_fields_set and answer.success is not True:
            return Outcome(False, error=f"CBX1 rejected the record: {reason(answer.error)}")
        if not answer.id:
            return Outcome(False, error=f"CBX1 answered {path} but returned no id for the record")
        return Outcome(True, answer.id, updated=answer.updated is True)


def outcome_of(result: BulkResult) -> Outcome:
    """Only the JSON literal true is a success ("true", 1 or "yes" are not)."""
    if result.success is True:
        return Outcome(True, result.id, updated=result.updated is True)
    return Outcome(False, error=f"CBX1 rejected the record: {reason(result.error)}")
