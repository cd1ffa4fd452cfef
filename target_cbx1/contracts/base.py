"""The contract interface every CBX1 endpoint implements, the outcome type, and matching results by key."""

from __future__ import annotations

import abc
import functools
import logging
import typing as t
from dataclasses import dataclass

from pydantic import BaseModel, TypeAdapter, ValidationError

from target_cbx1 import jsonio
from target_cbx1.errors import RequestFailedError
from target_cbx1.models import ResultsData

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from target_cbx1.errors import RejectedError

logger = logging.getLogger("target-cbx1.contracts")

# Whole-request rejections that one bad record can cause: the records are then sent one by one.
ISOLATED_STATUSES = frozenset({400, 422})

Payload = dict[str, t.Any]
Normaliser = t.Callable[[object], str]
DataModel = t.TypeVar("DataModel", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One record's result as CBX1 reported it.

    `existing`: CBX1 already held this data (a success that wrote nothing); `updated`: the write
    changed a record CBX1 already had, when the endpoint says so; `unanswered`: the answer had no
    result for the record (a failure worth sending again).
    """

    success: bool
    id: str | None = None
    error: str | None = None
    updated: bool = False
    existing: bool = False
    unanswered: bool = False


class Contract(abc.ABC):
    """How one CBX1 endpoint is spoken: its paths and bodies, and what its answers mean per record.

    A contract sends nothing itself; `normalise` gives the form lookup keys are compared in.
    """

    def __init__(self, normalise: Normaliser) -> None:
        self.normalise = normalise

    @abc.abstractmethod
    def batch_path(self, payload: Payload) -> str:
        """The path the request carrying this payload goes to (one request, one path)."""

    @abc.abstractmethod
    def batch_body(self, payloads: Sequence[Payload]) -> t.Any:
        """The JSON-ready body of a request carrying these payloads."""

    @abc.abstractmethod
    def batch_outcomes(self, path: str, data: t.Any, keys: Sequence[str]) -> list[Outcome]:
        """One outcome per sent record (keys: their normalised lookup keys), from the answer's `data`.

        Raises RequestFailedError when `data` is not the documented shape.
        """

    def single_path(self, payload: Payload) -> str:
        """The path of the single-record form; by default a request of one."""
        return self.batch_path(payload)

    def single_body(self, payload: Payload) -> t.Any:
        return self.batch_body([payload])

    def single_outcome(self, path: str, data: t.Any, key: str) -> Outcome:
        return self.batch_outcomes(path, data, [key])[0]

    def isolates(self, path: str, error: RejectedError, keys: Sequence[str]) -> bool:
        """Whether a rejected request's records are worth sending one by one (only the bad one fails)."""
        return len(keys) > 1 and error.status in ISOLATED_STATUSES

    def match_by_key(self, keys: Sequence[str], results: Iterable[tuple[object, Outcome]]) -> list[Outcome]:
        """The outcome of each sent key, found by normalised lookupKey and never by position.

        A sent key without a result fails, and so does one with two results that disagree. In a
        request of one record, a lone result without a lookupKey is that record's. Results for keys
        that were not sent are logged.
        """
        results = list(results)
        if len(keys) == 1 and len(results) == 1 and results[0][0] is None:
            return [results[0][1]]
        by_key: dict[str, Outcome] = {}
        for lookup_key, outcome in results:
            if lookup_key is None:
                continue
            key = self.normalise(lookup_key)
            earlier = by_key.get(key)
            by_key[key] = (
                outcome if earlier is None or earlier == outcome else conflicting(key, earlier, outcome)
            )
        outcomes = [by_key.pop(key) if key in by_key else no_result(key) for key in keys]
        if by_key:
            logger.warning("CBX1 returned results for keys not sent: %s", sorted(by_key))
        return outcomes


def no_result(key: str) -> Outcome:
    return Outcome(
        success=False,
        error=f"no result returned for lookupKey {key!r}: CBX1 answered the request but said nothing "
        "about this record",
        unanswered=True,
    )


def conflicting(key: str, first: Outcome, second: Outcome) -> Outcome:
    """Two results for one key that disagree: neither can be believed, so the record fails."""
    if not first.success and first.error and first.error.startswith("CBX1 returned conflicting results"):
        return first
    return Outcome(
        success=False,
        error=f"CBX1 returned conflicting results for lookupKey {key!r} ({describe(first)} and "
        f"{describe(second)}), so the record is not counted as written",
    )


def describe(outcome: Outcome) -> str:
    if outcome.success:
        return f"written as {outcome.id}" if outcome.id else "written without an id"
    return f"failed: {outcome.error}"


def reason(error: object) -> str:
    """CBX1's per-record error as readable text, whatever its JSON type."""
    if isinstance(error, str) and error.strip():
        return error.strip()
    if error is None or error == "":
        return "(no reason given)"
    text = jsonio.encode_text(error)
    return text if len(text) <= 200 else text[:197] + "..."


def read_data(model: type[DataModel], path: str, data: t.Any) -> DataModel:
    """An answer's `data` read as `model`; RequestFailedError (every record fails) when it does not fit."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError:
        raise RequestFailedError(f"CBX1 answered {path} without a readable data object") from None


def read_results(model: type[DataModel], path: str, data: t.Any) -> list[DataModel]:
    """Each result of an answer's `data.results` read as `model`. A result that cannot be read is
    logged and left out, so only its own record ends without a result.
    """
    results = read_data(ResultsData, path, data).results
    try:  # every result at once, in one call, when all of them can be read (the usual case)
        return _list_of(model).validate_python(results)
    except ValidationError:
        pass
    readable = []
    for result in results:
        try:
            readable.append(model.model_validate(result))
        except ValidationError:
            text = jsonio.encode_text(result)
            logger.warning(
                "%s: CBX1 sent a result that cannot be read, so it is left out: %s", path, text[:200]
            )
    return readable


@functools.cache
def _list_of(model: type[DataModel]) -> TypeAdapter[list[DataModel]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]
