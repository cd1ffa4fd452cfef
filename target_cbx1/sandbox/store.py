"""The sandbox's upsert store: one id per lookup key, per-record validation like CBX1's."""

from __future__ import annotations

import re
import threading
import typing as t
import uuid
from dataclasses import dataclass, field

DEFAULT_LOOKUP_FIELDS = {"accounts": "domain", "contacts": "email"}

_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)+$")
_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")


class UnknownTargetError(Exception):
    """A stream the sandbox has no lookup field for (the real API answers 404)."""


@dataclass
class StoredRecord:
    """What the store holds for one lookup key: its id, the last record written, and how often."""

    id: str
    record: dict[str, t.Any]
    writes: int = 1


@dataclass
class Outcome:
    """One record's result, in the shape of a /bulk result."""

    lookup_key: str | None
    id: str | None = None
    error: str | None = None

    def as_result(self) -> dict[str, t.Any]:
        result: dict[str, t.Any] = {
            "success": self.error is None,
            "id": self.id,
            "lookupKey": self.lookup_key,
        }
        if self.error is not None:
            result["error"] = self.error
        return result


def normalise(kind: str, value: str) -> str:
    """The key the store files a value under: trimmed; emails and domains in lower case, domains bare."""
    key = value.strip()
    if kind == "text":
        return key
    key = key.lower()
    if kind == "domain":
        key = re.sub(r"^[a-z]+://", "", key).split("/", 1)[0].removeprefix("www.")
    return key


def is_valid(kind: str, key: str) -> bool:
    """Whether a normalised key passes its kind's check: a host name for domains, an address for emails."""
    if kind == "domain":
        return bool(_HOST.match(key))
    if kind == "email":
        return bool(_EMAIL.match(key))
    return True


def kind_of(field_name: str) -> str:
    name = field_name.lower()
    return "email" if "email" in name else "domain" if "domain" in name else "text"


@dataclass
class UpsertStore:
    """Records by stream and lookup key; the same key always keeps the same id."""

    lookup_fields: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LOOKUP_FIELDS))
    records: dict[str, dict[str, StoredRecord]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def lookup_field(self, stream: str) -> str:
        if stream not in self.lookup_fields:
            served = ", ".join(sorted(self.lookup_fields))
            raise UnknownTargetError(f"Unknown target '{stream}': this API upserts {served}")
        return self.lookup_fields[stream]

    def upsert(self, stream: str, record: t.Any) -> Outcome:
        """Validate and store one record; an invalid one gets an error and is not stored."""
        field_name = self.lookup_field(stream)
        if not isinstance(record, dict):
            return Outcome(None, error="Invalid record: expected a JSON object")
        value = record.get(field_name)
        if value is None or value == "":
            return Outcome(None, error=f"{field_name} is required")
        kind = kind_of(field_name)
        if kind != "text" and not isinstance(value, str):
            return Outcome(str(value), error=f"Invalid {kind}")
        key = normalise(kind, str(value))
        if not is_valid(kind, key):
            return Outcome(key, error=f"Invalid {kind}")
        with self._lock:
            stored = self.records.setdefault(stream, {})
            if key in stored:
                stored[key].record = record
                stored[key].writes += 1
            else:
                stored[key] = StoredRecord(id=str(uuid.uuid4()), record=record)
            return Outcome(key, id=stored[key].id)

    def key_of(self, stream: str, record: t.Any) -> str | None:
        """The normalised lookup key of a record as sent, for naming it in errors and faults."""
        field_name = self.lookup_fields.get(stream)
        if field_name is None or not isinstance(record, dict) or record.get(field_name) in (None, ""):
            return None
        return normalise(kind_of(field_name), str(record[field_name]))

    def listing(self) -> dict[str, dict[str, dict[str, t.Any]]]:
        """Everything stored, as JSON-ready data: {stream: {lookupKey: {id, record, writes}}}."""
        with self._lock:
            return {
                stream: {
                    key: {"id": item.id, "record": item.record, "writes": item.writes}
                    for key, item in stored.items()
                }
                for stream, stored in self.records.items()
            }
