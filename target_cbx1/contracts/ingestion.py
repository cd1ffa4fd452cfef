"""The unified ingestion contract: envelopes to /targets/integrations/{SOURCE}/{OBJECT_TYPE}/records."""

from __future__ import annotations

import re
import typing as t

from target_cbx1.contracts.base import Contract, Normaliser, Outcome, Payload, read_data
from target_cbx1.models import IngestionData, IngestionResult

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from target_cbx1.errors import RejectedError

OBJECT_TYPES = ("ACCOUNT", "CONTACT")


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
        results = read_data(IngestionData, path, data).results
        return self.match_by_key(keys, ((result.lookup_key, outcome_of(result)) for result in results))

    def isolates(self, path: str, error: RejectedError, keys: Sequence[str]) -> bool:
        """Not when CBX1's message names the request's SOURCE or object type rather than a record:
        each record sent alone would be refused the same way.
        """
        if not super().isolates(path, error, keys):
            return False
        message = error.server_message
        if any(key and key in message.lower() for key in keys):
            return True
        source = path.rsplit("/", 3)[1]  # .../{SOURCE}/{OBJECT_TYPE}/records
        return not any(re.search(rf"\b{re.escape(word)}\b", message) for word in (source, self.object_type))


def outcome_of(result: IngestionResult) -> Outcome:
    """SUCCESS: written; SKIPPED: already there (a success, counted as existing); anything else fails."""
    status = result.status.upper()
    if status == "SUCCESS":
        return Outcome(True, result.entity_id)
    if status == "SKIPPED":
        return Outcome(True, result.entity_id, existing=True)
    if status == "FAILED":
        return Outcome(False, error=f"CBX1 rejected the record: {result.error or '(no reason given)'}")
    return Outcome(
        False,
        error=f"CBX1 answered status {result.status!r} for the record, which is not SUCCESS, SKIPPED "
        "or FAILED, so it is not counted as written",
    )
