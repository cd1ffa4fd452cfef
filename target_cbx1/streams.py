"""Stream routing: which contract a stream's records go to, by which lookup key, object type and source."""

from __future__ import annotations

import logging
import os
import typing as t

from target_cbx1.contracts.bulk import BulkContract
from target_cbx1.contracts.ingestion import IngestionContract
from target_cbx1.records import (
    DELETED_AT,
    PLAIN_WORD,
    LookupKind,
    LookupRule,
    PayloadOptions,
    RecordRejectedError,
    SourceRule,
    build_envelope,
    build_payload,
    deletion_of,
    external_id_of,
    lookup_rule_for,
    stream_kind,
    wrap_flat,
)

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from target_cbx1.contracts.base import Contract, Payload
    from target_cbx1.settings import Settings

logger = logging.getLogger("target-cbx1.streams")

Shape = t.Literal["flat", "wrapped", "envelope"]
ENVELOPE_PROPERTIES = frozenset({"data", "lookupKey"})


def is_envelope_schema(schema: Mapping[str, t.Any]) -> bool:
    """A stream whose schema has `data` and `lookupKey` carries envelope records."""
    properties = schema.get("properties")
    return isinstance(properties, dict) and properties.keys() >= ENVELOPE_PROPERTIES


def object_type_for(stream: str, overrides: Mapping[str, str]) -> str | None:
    """object_types[stream], else ACCOUNT for account/company streams and CONTACT for contact/lead/person."""
    if stream in overrides:
        return overrides[stream]
    kind = stream_kind(stream)
    return kind.upper() if kind is not None else None


class StreamRoute:
    """How one stream's records travel: the contract, how a record becomes its payload, and the
    reason none of them can be sent (`problem`), if there is one.
    """

    def __init__(
        self,
        stream: str,
        shape: Shape,
        contract: Contract | None,
        lookup: LookupRule | None,
        sources: SourceRule,
        options: PayloadOptions,
        problem: str | None = None,
    ) -> None:
        self.stream = stream
        self.shape = shape
        self._contract = contract
        self.lookup = lookup
        self.sources = sources
        self.options = options
        self.problem = problem
        self.on_deletion: t.Callable[[str], None] = lambda stream: None  # the router warns once a stream

    @property
    def contract(self) -> Contract:
        if self._contract is None:
            raise RuntimeError(f"stream {self.stream!r} sends nothing: {self.problem}")
        return self._contract

    def prepare(self, record: Mapping[str, t.Any]) -> tuple[str, Payload]:
        """(normalised lookup key, payload to send); raises RecordRejectedError for a record not to send."""
        if self.problem is not None or self.lookup is None:
            raise RecordRejectedError(self.problem or "no lookup field")
        deletion = deletion_of(record, in_data=self.shape == "envelope")
        if deletion is not None:  # CBX1 cannot delete: an upsert would write the deleted record back
            self.on_deletion(self.stream)
            raise RecordRejectedError(deletion, self.key_if_any(record))
        if self.shape == "envelope":
            return build_envelope(record, self.stream, self.lookup, self.sources, self.options)
        if self.shape == "wrapped":
            return wrap_flat(record, self.stream, self.lookup, self.sources, self.options)
        return build_payload(record, self.stream, self.lookup, self.options)

    def key_if_any(self, record: Mapping[str, t.Any]) -> str | None:
        """The record's normalised lookup key, None when it has none fit to be one."""
        if self.lookup is None:
            return None
        try:
            return self.lookup.key_of(record.get(self.lookup.field))
        except RecordRejectedError as exc:
            return exc.lookup_key

    def external_id(self, record: Mapping[str, t.Any]) -> t.Any:
        """The CRM's id of a record as received: an envelope's sourceRecordId, else crmAssociationId
        (or externalId) of a flat record.
        """
        return record.get("sourceRecordId") if self.shape == "envelope" else external_id_of(record)

    def payload_external_id(self, payload: Mapping[str, t.Any]) -> t.Any:
        """The CRM's id as a prepared payload carries it."""
        return external_id_of(payload) if self.shape == "flat" else payload.get("sourceRecordId")

    def payload_key(self, payload: Mapping[str, t.Any]) -> str:
        """The normalised lookup key of a prepared payload, the form CBX1's results are matched in."""
        field = "lookupKey" if self.shape != "flat" else self.lookup.field if self.lookup else ""
        value = payload.get(field)
        if self.shape != "envelope" and isinstance(value, str) and value.isascii():
            return value  # prepare() already put the normalised key there
        return self.lookup.normalise(value) if self.lookup else str(value)

    def describe(self) -> str:
        if self.problem is not None:
            return f"nothing is sent: {self.problem}"
        shown = {"flat": "flat records", "wrapped": "flat records wrapped as envelopes"}
        what = shown.get(self.shape, "envelope records")
        if isinstance(self._contract, IngestionContract):
            return f"{what} to integrations/{{SOURCE}}/{self._contract.object_type}/records"
        return f"{what} to {self.stream}/bulk (one record a request: /upsert)"


class StreamRouter:
    """Decides each stream's route from the settings and its SCHEMA, and logs each decision once."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
        self._settings = settings
        connector = (environ.get("CONNECTOR_ID") or "").strip() or None
        self._sources = (
            SourceRule(settings.source, "the setting source")
            if settings.source
            else SourceRule(connector, "the environment variable CONNECTOR_ID")
        )
        self._options = PayloadOptions(settings.add_stream_key, settings.metadata)
        self._logged: set[tuple[str, str]] = set()
        self._deletions_logged: set[str] = set()

    def route(self, stream: str, schema: Mapping[str, t.Any], key_properties: Sequence[str]) -> StreamRoute:
        api = self._settings.api
        envelope = is_envelope_schema(schema)
        if api == "bulk" or (api == "auto" and not envelope):
            route = self._flat(stream, key_properties)
        else:
            route = self._to_records(stream, "envelope" if envelope else "wrapped", key_properties)
        route.on_deletion = self._log_deletions_once
        self._log_once(route)
        return route

    def _flat(self, stream: str, key_properties: Sequence[str]) -> StreamRoute:
        lookup = lookup_rule_for(stream, key_properties, self._settings.lookup_fields)
        if not PLAIN_WORD.fullmatch(stream):  # the name goes into the URL: it may not change the path
            return StreamRoute(stream, "flat", None, lookup, self._sources, self._options, unfit_name(stream))
        contract = BulkContract(stream, lookup.normalise if lookup else str)
        problem = None if lookup else missing_lookup_message(stream)
        return StreamRoute(stream, "flat", contract, lookup, self._sources, self._options, problem)

    def _to_records(self, stream: str, shape: Shape, key_properties: Sequence[str]) -> StreamRoute:
        object_type = object_type_for(stream, self._settings.object_types)
        if shape == "envelope":
            kind: LookupKind = "domain" if object_type == "ACCOUNT" else "email"
            lookup: LookupRule | None = LookupRule("lookupKey", kind, checked=False)
        else:
            lookup = lookup_rule_for(stream, key_properties, self._settings.lookup_fields)
        if object_type is None:
            problem: str | None = missing_object_type_message(stream)
        else:
            problem = None if lookup else missing_lookup_message(stream)
        contract = IngestionContract(object_type, lookup.normalise) if object_type and lookup else None
        return StreamRoute(stream, shape, contract, lookup, self._sources, self._options, problem)

    def _log_deletions_once(self, stream: str) -> None:
        if stream in self._deletions_logged:
            return
        self._deletions_logged.add(stream)
        logger.warning(
            "Stream %r: records marked deleted (%s set) are not sent, since CBX1 has no delete; each "
            "fails in the state, and the record stays in CBX1 until it is removed there",
            stream,
            DELETED_AT,
        )

    def _log_once(self, route: StreamRoute) -> None:
        description = route.describe()
        if (route.stream, description) in self._logged:
            return
        self._logged.add((route.stream, description))
        level = logging.ERROR if route.problem else logging.INFO
        logger.log(level, "Stream %r: %s", route.stream, description)


def unfit_name(stream: str) -> str:
    return (
        f"stream {stream!r} cannot name a CBX1 endpoint: a stream name in the URL path must be one "
        "word of letters, digits, _ or - (CBX1's are: accounts, contacts), so its records were not "
        f'sent; rename the stream with a stream map, e.g. {{"{stream}": {{"__alias__": "accounts"}}}}'
    )


def missing_lookup_message(stream: str) -> str:
    return (
        f"stream {stream!r} has no lookup field (its name names no account/company or "
        "contact/lead/person, and it has no single key property), so its records were "
        f'not sent: set lookup_fields in the config, e.g. {{"{stream}": "email"}}'
    )


def missing_object_type_message(stream: str) -> str:
    return (
        f"stream {stream!r} has no CBX1 object type (its name names no account/company or "
        "contact/lead/person), so its records were not sent to the records endpoint: set "
        f'object_types in the config, e.g. {{"{stream}": "CONTACT"}}'
    )
