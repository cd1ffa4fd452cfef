"""Where a record becomes a payload: lookup field, key normalisation, options, hash."""

from __future__ import annotations

import hashlib
import re
import typing as t
from dataclasses import dataclass

import idna

from target_cbx1 import jsonio

ACCOUNT_STREAM_HINTS = ("account", "compan")
CONTACT_STREAM_HINTS = ("contact", "lead", "person")
SDC_PREFIX = "_sdc_"
DELETED_AT = "_sdc_deleted_at"  # singer-sdk's soft-delete column: set, the tap says the record was deleted

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://")
_HOST = re.compile(r"^(?=.{1,253}$)[^\s.@/:?#]+(?:\.[^\s.@/:?#]+)+$")
_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")
PLAIN_WORD = re.compile(r"[A-Za-z0-9_-]+")  # used with fullmatch: no trailing newline slips in


class RecordRejectedError(Exception):
    """A record the target will not send; the message is its state entry's error."""

    def __init__(self, message: str, lookup_key: str | None = None) -> None:
        super().__init__(message)
        self.lookup_key = lookup_key


_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def normalise_domain(value: str) -> str:
    """acme.com from ' https://www.Acme.com/about. ' (lower case; no zero-width characters, scheme,
    www., port, path or trailing dot). International names stay as written: münchen.de.
    """
    host = _SCHEME.sub("", value.translate(_ZERO_WIDTH).strip().lower())
    host = re.split(r"[/?#]", host, maxsplit=1)[0]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host.removeprefix("www.").rstrip(".")


def normalise_email(value: str) -> str:
    """ann@acme.com from ' Ann@Acme.COM ' (trimmed, lower case, no zero-width characters)."""
    return value.translate(_ZERO_WIDTH).strip().lower()


def ascii_form(text: str) -> str:
    """The form international domains are compared in (IDNA 2008, as browsers and registries use):
    münchen.de and xn--mnchen-3ya.de are one, and straße.de is xn--strae-oqa.de, not strasse.de.

    An email's domain part is converted too; text that IDNA cannot encode stays as it is.
    """
    if text.isascii():
        return text
    local, at, domain = text.rpartition("@")
    try:
        return local + at + idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return text


LookupKind = t.Literal["domain", "email", "text"]


@dataclass(frozen=True)
class LookupRule:
    """The field a stream's records are upserted by, and how its values are normalised and checked.

    `checked`: whether a value must look like its kind before it is sent (flat records); envelope
    keys are only required, and CBX1 judges them.
    """

    field: str
    kind: LookupKind
    checked: bool = True

    @classmethod
    def named(cls, field: str) -> LookupRule:
        """The rule for a field, its kind told by its name (email, domain/website, else text)."""
        name = field.lower()
        kind: LookupKind = "text"
        if "email" in name:
            kind = "email"
        elif "domain" in name or name == "website":
            kind = "domain"
        return cls(field, kind)

    def cleaned(self, value: str) -> str:
        """The value as it is sent: trimmed, and for domains and emails normalised (Unicode kept)."""
        if self.kind == "domain":
            return normalise_domain(value)
        return normalise_email(value) if self.kind == "email" else value.strip()

    def normalise(self, value: object) -> str:
        """The form keys are compared in (CBX1's answers included, international names as ASCII);
        never rejects.
        """
        if not isinstance(value, str) or self.kind == "text":
            return str(value).strip()
        cleaned = self.cleaned(value)
        return cleaned if cleaned.isascii() else ascii_form(cleaned)

    def key_of(self, value: object) -> str:
        """The normalised lookup key of a value; raises RecordRejectedError when it cannot be one."""
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RecordRejectedError(
                f"{self.field} is required: the record has no {self.field}, which is the lookup "
                "key CBX1 upserts by, so it was not sent"
            )
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            shown = jsonio.encode_text(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise RecordRejectedError(
                f"{self.field} must be text (or a whole number), not {shown}, so it was not sent"
            )
        if not self.checked or self.kind == "text":
            return self.normalise(value)
        if not isinstance(value, str):
            raise RecordRejectedError(f"invalid {self.kind} {value!r}: expected text")
        key = self.normalise(value)
        if self.kind == "domain" and not _HOST.match(key):
            raise RecordRejectedError(
                f"invalid domain {value!r}: expected a host name such as acme.com", key or None
            )
        if self.kind == "email" and not _EMAIL.match(key):
            raise RecordRejectedError(
                f"invalid email {value!r}: expected an address such as ann@acme.com", key
            )
        return key


def stream_kind(stream: str) -> t.Literal["account", "contact"] | None:
    """What a stream's name says it holds, in any case: account/company streams, contact/lead/person
    streams, or neither. Account hints are checked first.
    """
    name = stream.lower()
    if any(hint in name for hint in ACCOUNT_STREAM_HINTS):
        return "account"
    if any(hint in name for hint in CONTACT_STREAM_HINTS):
        return "contact"
    return None


def lookup_rule_for(
    stream: str, key_properties: t.Sequence[str], overrides: t.Mapping[str, str]
) -> LookupRule | None:
    """lookup_fields[stream], else domain/email by stream name, else the single key property."""
    if stream in overrides:
        return LookupRule.named(overrides[stream])
    kind = stream_kind(stream)
    if kind is not None:
        return LookupRule.named("domain" if kind == "account" else "email")
    if len(key_properties) == 1:
        return LookupRule.named(key_properties[0])
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


def without_sdc_columns(record: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """A copy of the record without Singer's _sdc_* columns."""
    if SDC_PREFIX in "".join(record):  # a quick look first: most records have no _sdc_ column
        return {name: value for name, value in record.items() if not name.startswith(SDC_PREFIX)}
    return dict(record)


def deletion_of(record: t.Mapping[str, t.Any], *, in_data: bool = False) -> str | None:
    """The error of a record its tap marks deleted (`_sdc_deleted_at` set: not null, blank or false;
    with `in_data`, in its `data` object too); None for a live record.
    """
    where, value = DELETED_AT, record.get(DELETED_AT)
    if in_data and not _is_set(value):
        data = record.get("data")
        if isinstance(data, dict):
            where, value = f"data.{DELETED_AT}", data.get(DELETED_AT)
    if not _is_set(value):
        return None
    shown = value if isinstance(value, str) else jsonio.encode_text(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"the record is a deletion ({where} {shown}); CBX1 has no delete, so it was not sent"


def _is_set(value: object) -> bool:
    """Whether a value says something: not null, blank text or false."""
    return not (value is None or value is False or (isinstance(value, str) and not value.strip()))


def apply_options(payload: dict[str, t.Any], stream: str, options: PayloadOptions) -> dict[str, t.Any]:
    """add_stream_key and metadata, at the payload's top level."""
    if options.add_stream_key:
        payload["stream"] = stream
    if options.metadata:
        existing = payload.get("metadata")
        payload["metadata"] = {**(existing if isinstance(existing, dict) else {}), **options.metadata}
    return payload


def build_payload(
    record: t.Mapping[str, t.Any], stream: str, rule: LookupRule, options: PayloadOptions
) -> tuple[str, dict[str, t.Any]]:
    """(lookup key, payload): the record minus _sdc_* columns, a text key normalised, options applied.

    A lookup value that is not text (an integer id) is sent as it is, not as the text of its key.
    """
    lookup_value = record.get(rule.field)
    key = rule.key_of(lookup_value)
    payload = without_sdc_columns(record)
    if isinstance(lookup_value, str):
        payload[rule.field] = key if lookup_value.isascii() else rule.cleaned(lookup_value)
    return key, apply_options(payload, stream, options)


@dataclass(frozen=True)
class SourceRule:
    """Which CRM a record comes from: its own field, else the configured default (upper-cased)."""

    default: str | None
    default_named_by: str = "source"

    def source_of(self, own: object, lookup_key: str | None = None) -> str:
        """The SOURCE for a record's URL path; raises RecordRejectedError (naming the record's
        `lookup_key`) when there is none fit for one.
        """
        value = own if own not in (None, "") else self.default
        if value is None:
            raise RecordRejectedError(
                "no source: the record names no CRM (source), and neither the setting `source` nor "
                "the environment variable CONNECTOR_ID is set; set `source` (HUBSPOT, SALESFORCE or "
                "MARKETO) in the config, so it was not sent",
                lookup_key,
            )
        if not isinstance(value, str) or not PLAIN_WORD.fullmatch(value):
            named_by = "the record" if value is own else self.default_named_by
            raise RecordRejectedError(
                f"invalid source {value!r} (from {named_by}): a source is one word of letters, digits, "
                "_ or - such as HUBSPOT, so it was not sent",
                lookup_key,
            )
        return value.upper()


def build_envelope(
    record: t.Mapping[str, t.Any],
    stream: str,
    rule: LookupRule,
    sources: SourceRule,
    options: PayloadOptions,
) -> tuple[str, dict[str, t.Any]]:
    """(normalised lookup key, envelope) for an envelope record: its lookupKey sent as it is, `data`
    without _sdc_* columns, `source` resolved, options at the top level.
    """
    key = rule.key_of(record.get(rule.field))
    data = record.get("data")
    if not isinstance(data, dict):
        raise RecordRejectedError(
            "data is required: an envelope record carries its CBX1 fields as an object in `data`, "
            "and this one has none, so it was not sent",
            key,
        )
    source = sources.source_of(record.get("source"), key)
    envelope = without_sdc_columns(record)
    envelope["data"] = without_sdc_columns(data)
    envelope["source"] = source
    return key, apply_options(envelope, stream, options)


def wrap_flat(
    record: t.Mapping[str, t.Any],
    stream: str,
    rule: LookupRule,
    sources: SourceRule,
    options: PayloadOptions,
) -> tuple[str, dict[str, t.Any]]:
    """(lookup key, envelope) for a flat record sent to the records endpoint (api: records).

    `data` is the flat payload, `lookupKey` its checked lookup key, `sourceRecordId` the CRM id and
    `source` the record's crmSystem (else the default).
    """
    key, data = build_payload(record, stream, rule, PayloadOptions(add_stream_key=False, metadata=None))
    source = sources.source_of(record.get("crmSystem"), key)
    envelope: dict[str, t.Any] = {"data": data, "lookupKey": data.get(rule.field, key), "source": source}
    external_id = external_id_of(record)
    if external_id is not None:
        envelope["sourceRecordId"] = external_id
    return key, apply_options(envelope, stream, options)
