"""Where a record becomes a payload: lookup field, key normalisation, options, hash."""

from __future__ import annotations

import hashlib
import re
import typing as t
from dataclasses import dataclass
from functools import cached_property

from target_cbx1 import jsonio

ACCOUNT_STREAM_HINTS = ("account", "compan")
CONTACT_STREAM_HINTS = ("contact", "lead", "person")
SDC_PREFIX = "_sdc_"

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://")
_HOST = re.compile(r"^(?=.{1,253}$)[^\s.@/:?#]+(?:\.[^\s.@/:?#]+)+$")
_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")


class RecordRejectedError(Exception):
    """A record the target will not send; the message is its state entry's error."""

    def __init__(self, message: str, lookup_key: str | None = None) -> None:
        super().__init__(message)
        self.lookup_key = lookup_key


def normalise_domain(value: str) -> str:
    """acme.com from ' https://www.Acme.com/about ' (lower case, no scheme, www., port or path)."""
    host = _SCHEME.sub("", value.strip().lower())
    host = re.split(r"[/?#]", host, maxsplit=1)[0]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host.removeprefix("www.").rstrip(".")


def normalise_email(value: str) -> str:
    """ann@acme.com from ' Ann@Acme.COM ' (trimmed, lower case)."""
    return value.strip().lower()


@dataclass(frozen=True)
class LookupRule:
    """The field a stream's records are upserted by, and how its values are normalised and checked."""

    field: str

    @cached_property
    def kind(self) -> t.Literal["domain", "email", "text"]:
        name = self.field.lower()
        if "email" in name:
            return "email"
        if "domain" in name or name == "website":
            return "domain"
        return "text"

    def key_of(self, value: object) -> str:
        """The normalised lookup key of a value; raises RecordRejectedError when it cannot be one."""
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RecordRejectedError(
                f"{self.field} is required: the record has no {self.field}, which is the lookup "
                "key CBX1 upserts by, so it was not sent"
            )
        if self.kind == "text":
            return str(value).strip()
        if not isinstance(value, str):
            raise RecordRejectedError(f"invalid {self.kind} {value!r}: expected text")
        if self.kind == "domain":
            key = normalise_domain(value)
            if not _HOST.match(key):
                raise RecordRejectedError(
                    f"invalid domain {value!r}: expected a host name such as acme.com", key or None
                )
            return key
        key = normalise_email(value)
        if not _EMAIL.match(key):
            raise RecordRejectedError(
                f"invalid email {value!r}: expected an address such as ann@acme.com", key
            )
        return key


def lookup_rule_for(
    stream: str, key_properties: t.Sequence[str], overrides: t.Mapping[str, str]
) -> LookupRule | None:
    """lookup_fields[stream], else domain/email by stream name, else the single key property."""
    if stream in overrides:
        return LookupRule(overrides[stream])
    name = stream.lower()
    if any(hint in name for hint in ACCOUNT_STREAM_HINTS):
        return LookupRule("domain")
    if any(hint in name for hint in CONTACT_STREAM_HINTS):
        return LookupRule("email")
    if len(key_properties) == 1:
        return LookupRule(key_properties[0])
    return None


def record_hash(record: t.Mapping[str, t.Any]) -> str:
    """sha256 hex of the record as received (its JSON, keys in received order, numbers exact)."""
    return hashlib.sha256(jsonio.encode(record)).hexdigest()


def external_id_of(record: t.Mapping[str, t.Any]) -> t.Any:
    """The CRM id: HotGlue's ETL puts it in crmAssociationId; a record's own externalId also counts."""
    value = record.get("crmAssociationId")
    return record.get("externalId") if value is None else value


@dataclass(frozen=True)
class PayloadOptions:
    """The record preparation settings."""

    add_stream_key: bool
    metadata: t.Mapping[str, t.Any] | None


def build_payload(
    record: t.Mapping[str, t.Any], stream: str, rule: LookupRule, options: PayloadOptions
) -> tuple[str, dict[str, t.Any]]:
    """(lookup key, payload): the record minus _sdc_* columns, a text key normalised, options applied.

    A lookup value that is not text (an integer id) is sent as it is, not as the text of its key.
    """
    lookup_value = record.get(rule.field)
    key = rule.key_of(lookup_value)
    if SDC_PREFIX in "".join(record):  # a quick look first: most records have no _sdc_ column
        payload = {name: value for name, value in record.items() if not name.startswith(SDC_PREFIX)}
    else:
        payload = dict(record)
    if isinstance(lookup_value, str):
        payload[rule.field] = key
    if options.add_stream_key:
        payload["stream"] = stream
    if options.metadata:
        existing = payload.get("metadata")
        payload["metadata"] = {**(existing if isinstance(existing, dict) else {}), **options.metadata}
    return key, payload
