"""The sandbox's unified ingestion store: entities per object type, by lookup key, from known sources."""

from __future__ import annotations

import json
import re
import threading
import typing as t
import uuid
from dataclasses import dataclass, field

from target_cbx1.sandbox.store import is_valid, normalise

DEFAULT_SOURCES = ("HUBSPOT", "SALESFORCE", "MARKETO")
OBJECT_TYPES = ("ACCOUNT", "CONTACT")
KEY_KINDS = {"ACCOUNT": "domain", "CONTACT": "email"}
_SOURCE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class IngestionRequestError(Exception):
    """A records request the API refuses as a whole (HTTP 400), with the message it answers."""


def check_source_name(name: str) -> str:
    """A source name as the API spells them (upper case, as in HUBSPOT); ValueError otherwise."""
    if not _SOURCE_NAME.match(name):
        raise ValueError(f"source {name!r} must be upper case letters, digits or _, as in HUBSPOT")
    return name


@dataclass
class StoredEntity:
    """What the store holds for one lookup key: a stable id, the last data written, its origin, how often."""

    id: str
    data: dict[str, t.Any]
    source: str
    source_record_id: t.Any = None
    writes: int = 1


@dataclass
class EntityStore:
    """ACCOUNT and CONTACT entities by normalised lookup key; the same key always keeps the same id."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    entities: dict[str, dict[str, StoredEntity]] = field(
        default_factory=lambda: {object_type: {} for object_type in OBJECT_TYPES}
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.sources = tuple(check_source_name(name) for name in self.sources)
        if not self.sources:
            raise ValueError("the sandbox needs at least one source, as in HUBSPOT")

    def check_path(self, source: str, object_type: str) -> None:
        """Raise IngestionRequestError for a SOURCE or OBJECT_TYPE the API does not ingest."""
        if source not in self.sources:
            served = ", ".join(sorted(self.sources))
            raise IngestionRequestError(f"Unknown source '{source}': this API ingests {served}")
        if object_type not in OBJECT_TYPES:
            raise IngestionRequestError(f"Unknown object type '{object_type}': expected ACCOUNT or CONTACT")

    def key_of(self, object_type: str, record: dict[str, t.Any]) -> str | None:
        """The normalised lookupKey of a record as sent; None when it has none."""
        value = record.get("lookupKey")
        if not isinstance(value, str) or not value.strip():
            return None
        return normalise(KEY_KINDS[object_type], value)

    def ingest(self, source: str, object_type: str, record: dict[str, t.Any]) -> dict[str, t.Any]:
        """Validate and store one record; its result as the API reports it (SUCCESS, SKIPPED or FAILED)."""
        key = self.key_of(object_type, record)
        if key is None:
            return {"status": "FAILED", "entityId": None, "lookupKey": None, "error": "lookupKey is required"}
        error = self._invalid(source, object_type, record, key)
        if error is not None:
            return {"status": "FAILED", "entityId": None, "lookupKey": key, "error": error}
        data, source_record_id = record["data"], record.get("sourceRecordId")
        with self._lock:
            stored = self.entities[object_type]
            entity = stored.get(key)
            if entity is None:
                stored[key] = StoredEntity(str(uuid.uuid4()), data, source, source_record_id)
            elif entity.data == data and entity.source == source:
                return {"status": "SKIPPED", "entityId": entity.id, "lookupKey": key}
            else:
                entity.data, entity.source, entity.source_record_id = data, source, source_record_id
                entity.writes += 1
            return {"status": "SUCCESS", "entityId": stored[key].id, "lookupKey": key}

    @staticmethod
    def _invalid(source: str, object_type: str, record: dict[str, t.Any], key: str) -> str | None:
        """Why a record with a lookupKey cannot be stored, checked in the API's order; None when it can."""
        if not isinstance(record.get("data"), dict):
            return "data is required"
        if record.get("source") is not None and record["source"] != source:  # null counts as absent
            return f"source '{record['source']}' does not match the request's source '{source}'"
        kind = KEY_KINDS[object_type]
        if not is_valid(kind, key):
            return f"Invalid {kind}: {record['lookupKey']}"
        return None

    def listing(self) -> dict[str, dict[str, dict[str, t.Any]]]:
        """Everything stored, JSON-ready: {OBJECT_TYPE: {key: {id, data, source, sourceRecordId, writes}}}."""
        with self._lock:
            return {
                object_type: {
                    key: {
                        "id": entity.id,
                        "data": entity.data,
                        "source": entity.source,
                        "sourceRecordId": entity.source_record_id,
                        "writes": entity.writes,
                    }
                    for key, entity in stored.items()
                }
                for object_type, stored in self.entities.items()
            }


def read_records(body: bytes) -> list[dict[str, t.Any]]:
    """The records of a request body, {"records": [{...}, ...]}; IngestionRequestError if it is not that."""
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise IngestionRequestError(f"Request body is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise IngestionRequestError('The body must be {"records": [...]}')
    records: list[t.Any] = payload["records"]
    if not records:
        raise IngestionRequestError("records must not be empty")
    for position, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise IngestionRequestError(f"record {position} is not a JSON object")
    return records
