"""The unified ingestion contract: envelopes to /targets/integrations/{SOURCE}/{OBJECT_TYPE}/records."""

from __future__ import annotations

import re
import typing as t

from target_cbx1.contracts.base import Contract, Normaliser, Outcome, Payload, read_results, reason
from target_cbx1.models import IngestionResult

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from target_cbx1.errors import RejectedError


def records_path(source: str, object_type: str) -> str:
    """The path of one source's and object type's records endpoint (both plain upper-case words)."""
    return f"api/t/v1/targets/integrations/{source}/{object_type}/records"


class IngestionContract(Contract):
    """`{"records": [envelope, ...]}` per request, one SOURCE and object type to a request.

    Results are `{status: SUCCESS|SKIPPED|FAILED, entityId, lookupKey, error}`; SKIPPED means CBX1
    already held the same data from the same source: the record is there, nothing was written.
    A single record is a request of one, to the same endpoint.
    """

    def __init__(self, object_type: str, normalise: Normaliser) -> None:
        super().__init__(normalise)
        self.object_type = object_type

    def batch_path(self, payload: Payload) -> str:
        return records_path(payload["source"], self.object_type)

    def batch_body(self, payloads: Sequence[Payload]) -> t.Any:
        return {"records": list(payloads)}

    def batch_outcomes(self, path: str, data: t.Any, keys: Sequence[str]) -> list[Outcome]:
        results = read_results(IngestionResult, path, data)
        return self.match_by_key(keys, ((result.lookup_key, outcome_of(result)) for result in results))

    def isolates(self, path: str, error: RejectedError, keys: Sequence[str]) -> bool:
        """Not when CBX1's message is about the request's SOURCE or object type rather than a record
        (it names neither a key of the chunk nor a record, but the source, the object type, or
        either word): each record sent alone would be refused the same way.
        """
        if not super().isolates(path, error, keys):
            return False
        message = error.server_message.lower()
        if any(key and key.lower() in message for key in keys):
            return True
        source = path.rsplit("/", 3)[1]  # .../{SOURCE}/{OBJECT_TYPE}/records
        words = (re.escape(source.lower()), re.escape(self.object_type.lower()), "source", r"object ?type")
        return not any(re.search(rf"\b{word}\b", message) for word in words)


def outcome_of(result: IngestionResult) -> Outcome:
    """SUCCESS: written; SKIPPED: already there (a success, counted as existing); anything else fails."""
    if result.status == "SUCCESS":
        return Outcome(True, result.entity_id)
    if result.status == "SKIPPED":
        return Outcome(True, result.entity_id, existing=True)
    if result.status == "FAILED":
        return Outcome(False, error=f"CBX1 rejected the record: {reason(result.error)}")
    return Outcome(
        False,
        error=f"CBX1 answered status {result.status!r} for the record, which is not SUCCESS, SKIPPED "
        "or FAILED, so it is not counted as written",
    )
