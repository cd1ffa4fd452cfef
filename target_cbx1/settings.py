"""Settings, declared once: the typed model the target runs on, and the config schema `--about` shows."""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import types
import typing as t
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

import fastjsonschema
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticUndefined
from singer_sdk.exceptions import ConfigValidationError

from target_cbx1.records import PLAIN_WORD

try:
    __version__ = version("target-cbx1")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

ENV_PREFIX = "TARGET_CBX1_"  # --config ENV reads TARGET_CBX1_<SETTING> variables
# HotGlue writes these keys into the job's config; each is accepted beside our own name.
HOTGLUE_ALIASES = {"access_key": "Code", "org_id": "OrgId", "access_token": "AccessToken"}
OBJECT_TYPES = ("ACCOUNT", "CONTACT")
# Set by Meltano (4.4) for every plugin it runs: the project's root, and the loader's name.
MELTANO_VARIABLES = ("MELTANO_PROJECT_ROOT", "MELTANO_LOADER_NAME")


def setting(
    default: t.Any = PydanticUndefined,
    *,
    description: str,
    secret: bool = False,
    json_type: list[str] | None = None,
    **constraints: t.Any,
) -> t.Any:
    """One setting: its default, its description for `--about`, and its checks.

    `json_type` replaces the JSON types derived from the annotation, for settings that accept more
    shapes than they are held as (an org id given as a number, metadata given as JSON text).
    """
    extra: dict[str, t.Any] = {}
    if secret:
        extra["secret"] = True
    if json_type:
        extra["json_type"] = json_type
    factory = type(default) if isinstance(default, (list, dict)) else None
    if factory is not None:
        return Field(default_factory=factory, description=description, json_schema_extra=extra, **constraints)
    return Field(default, description=description, json_schema_extra=extra, **constraints)


HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class CustomHeader(BaseModel):
    """One extra request header: a token name, and a value with no line break or control character
    (which could smuggle another header into every request). The value is never quoted: it may be a
    secret.
    """

    name: str
    value: str

    @field_validator("name")
    @classmethod
    def _name_is_a_token(cls, name: str) -> str:
        if not HEADER_NAME.fullmatch(name):
            raise ValueError("is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)")
        return name

    @field_validator("value")
    @classmethod
    def _value_has_no_control_characters(cls, value: str) -> str:
        if CONTROL_CHARACTERS.search(value):
            raise ValueError("holds a line break or another control character")
        return value


class Settings(BaseModel):
    """The validated settings of one run. Each field is a setting; CONFIG_SCHEMA is derived from them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    api_url: str = setting(
        description="CBX1 base URL, e.g. https://api.cbx1.com. When absent, the environment "
        "variable BASE_URL is used (HotGlue sets it). Must be https:// except for "
        "loopback hosts (127.0.0.1, localhost)."
    )
    access_key: SecretStr = setting(
        secret=True,
        description="CBX1 access key, exchanged for a session token. HotGlue's key `Code` is accepted.",
    )
    org_id: str = setting(
        json_type=["string", "integer"],
        description="CBX1 organisation id, sent as the x-organisation-id header. HotGlue's key `OrgId` is "
        "accepted.",
    )
    ca_bundle: str | None = setting(
        None,
        description="A file of trusted CA certificates (PEM) for a CBX1 reached through a proxy or a "
        "private certificate authority. Default: REQUESTS_CA_BUNDLE, else the system's. TLS "
        "verification cannot be turned off.",
    )
    access_token: SecretStr | None = setting(
        None,
        secret=True,
        description="Optional cached session token (HotGlue's key `AccessToken` is accepted). "
        "A refreshed token is written back into the config file.",
    )
    expires_in: float | None = setting(
        None, description="Expiry of access_token as an absolute epoch second (HotGlue's convention)."
    )
    api: t.Literal["auto", "bulk", "records"] = setting(
        "auto",
        description="Which CBX1 endpoint a stream's records go to. auto: a stream whose SCHEMA has the "
        "properties `data` and `lookupKey` carries envelope records and goes to "
        "/targets/integrations/{SOURCE}/{OBJECT_TYPE}/records; any other stream goes to "
        "/targets/{stream}/bulk (or /upsert). bulk: every stream to /bulk. records: every stream to "
        "the records endpoint, flat records wrapped as envelopes.",
    )
    source: str | None = setting(
        None,
        description="The CRM records come from (HUBSPOT, SALESFORCE, MARKETO), for records that name "
        "none (no `source`, or for flat records no `crmSystem`). Default: the environment variable "
        "CONNECTOR_ID, which HotGlue sets. Upper-cased in the URL path.",
    )
    object_types: dict[str, str] = setting(
        {},
        description="CBX1 object type (ACCOUNT or CONTACT, in any case) per stream for the records "
        'endpoint, e.g. {"people": "CONTACT"}. Default: ACCOUNT for streams whose name contains account '
        "or compan, CONTACT for contact, lead or person, in any case.",
    )
    process_as_batch: bool = setting(
        True,
        description="true: chunks of batch_size records per request (BatchSink); false: one record per "
        "request (RecordSink: /upsert, or a records request of one).",
    )
    batch_size: int = setting(20, ge=1, le=10_000, description="Records per request in batch mode.")
    max_chunk_wait_seconds: float = setting(
        5,
        gt=0,
        le=3600,
        description="Longest a partly filled chunk waits for more records before it is sent, also while "
        "the tap sends nothing, so a slow tap's records, and in singer mode its STATE, still move.",
    )
    max_request_bytes: int | None = setting(
        None,
        gt=0,
        description="Largest request body in bytes (default: no limit). A chunk closes before its JSON "
        "body would pass it; a single record over it fails, saying so, and is not sent.",
    )
    add_stream_key: bool = setting(
        False,
        description='Add "stream": <stream name> to every payload (an envelope\'s top level).',
    )
    metadata: dict[str, t.Any] | None = setting(
        None,
        json_type=["object", "string"],
        description="An object (or a JSON string of one) merged into every payload's `metadata` object "
        "(an envelope's top level).",
    )
    repair_text: bool = setting(
        False,
        description="Fix mojibake (UTF-8 text that was decoded as Latin-1 or Windows-1252 upstream, such "
        "as CafÃ© for Café) in every text value with ftfy before sending. Off by default: it changes "
        "valid text that merely looks like mojibake. Bytes that are not UTF-8 are always replaced.",
    )
    inject_batch_ids: bool = setting(
        False,
        description="Add hgBatchId (md5 of JOB_ROOT:stream:chunk index) to every payload and "
        "to its record's state entry.",
    )
    custom_headers: list[CustomHeader] = setting(
        [], description="Extra HTTP headers for every request, as a list of {name, value} objects."
    )
    user_agent: str = setting(f"target-cbx1/{__version__}", description="User-Agent header of every request.")
    lookup_fields: dict[str, str] = setting(
        {},
        description='Lookup field per stream of flat records, e.g. {"leads": "email"}. Default: domain '
        "for account/company streams, email for contact/lead/person streams, else the "
        "stream's single key property.",
    )
    max_retries: int = setting(
        5,
        ge=0,
        le=100,
        description="Retries of a request after its first attempt, for 408, 429, 5xx and network errors.",
    )
    backoff_base_seconds: float = setting(
        1, ge=0, le=3600, description="First retry delay; each retry doubles it (with jitter)."
    )
    backoff_max_seconds: float = setting(
        60,
        ge=0,
        le=3600,
        description="Longest delay between two retries, unless the server's Retry-After asks for more.",
    )
    retry_after_max_seconds: float = setting(
        300,
        ge=0,
        le=86_400,
        description="A Retry-After longer than this is treated as a failed request, not waited for.",
    )
    timeout: float = setting(
        60,
        gt=0,
        le=3600,
        description="Seconds each HTTP answer may take, as a whole (a trickled answer is given up on).",
    )
    state_output: t.Literal["hotglue", "singer"] = setting(
        "hotglue",
        description="What the target prints on stdout. hotglue: one HotGlue state line with every "
        "record's outcome, at the end. singer: the tap's STATE messages, each forwarded once every "
        "record before it is written (for Meltano and other Singer runners). Under Meltano, singer "
        "unless set.",
    )
    results_path: str | None = setting(
        None,
        description="File for the per-record outcomes in HotGlue's shape (bookmarks and summary), "
        "written at the end, in either state_output mode. In singer mode it is where CBX1 ids and "
        "errors go.",
    )
    dry_run: bool = setting(
        False,
        description="Read, check and prepare every record, print the first request bodies and a "
        "summary on stderr, but never connect to the API and claim no success.",
    )
    progress_interval_seconds: float = setting(
        10,
        ge=0,
        le=86_400,
        description="Seconds between progress lines on stderr (records read, confirmed, failed, in flight, "
        "rate); 0 turns them off. A summary table per stream is logged at the end.",
    )
    max_concurrency: int = setting(
        8,
        ge=1,
        le=64,
        description="Requests in flight at once per stream (1: strictly one at a time). Records with the "
        "same lookup key are never in flight together, and the state keeps input order.",
    )
    max_requests_per_second: float | None = setting(
        None,
        gt=0,
        le=100_000,
        description="Client-side ceiling on requests started in any one-second window, for the whole run "
        "(default: none). A 429 halves the rate, which then grows back gradually.",
    )
    max_consecutive_request_failures: int = setting(
        5,
        ge=1,
        le=100_000,
        description="Requests in a row that may fail after all their retries before the run stops "
        "because the API looks down (the state so far is written; a rerun sends the rest).",
    )
    incremental_state_path: str | None = setting(
        None,
        description="File kept current with the state while running (atomic replace), and read on "
        "start to skip records already written. Default: HotGlue's "
        "/home/hotglue/$JOB_ID/incremental_target_state.json when JOB_ID is set and that folder "
        "exists; otherwise off.",
    )

    @field_validator("org_id", mode="before")
    @classmethod
    def _org_id_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_from_json_text(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not valid JSON ({exc.msg})") from None
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url_is_safe(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("is not an http(s) URL such as https://api.cbx1.com")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError(
                f"http://{parts.hostname} uses plain http://; use https:// "
                "(http is accepted only for 127.0.0.1 / localhost)"
            )
        return value.strip()

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_is_a_file(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError("is not a file of CA certificates")
        return value

    @field_validator("source")
    @classmethod
    def _source_is_a_word(cls, value: str | None) -> str | None:
        if value is not None and not PLAIN_WORD.fullmatch(value):
            raise ValueError("must be one word of letters, digits, _ or -, such as HUBSPOT")
        return value

    @field_validator("object_types")
    @classmethod
    def _object_types_known(cls, value: dict[str, str]) -> dict[str, str]:
        upper = {stream: kind.upper() for stream, kind in value.items()}
        unknown = sorted(stream for stream, kind in upper.items() if kind not in OBJECT_TYPES)
        if unknown:
            shown = ", ".join(f"{stream!r}: {value[stream]!r}" for stream in unknown)
            raise ValueError(f"must map each stream to ACCOUNT or CONTACT, not {shown}")
        return upper

    @classmethod
    def from_config(
        cls,
        config: t.Mapping[str, t.Any],
        builtin_schema: t.Mapping[str, t.Any] | None = None,
        earlier_problems: t.Sequence[str] = (),
    ) -> Settings:
        """Resolve HotGlue aliases and BASE_URL, then validate (absent settings take their defaults).

        `builtin_schema`: the JSON schema of the singer-sdk settings the target also honours (stream
        maps, flattening, validate_records), checked here too. Raises ConfigValidationError whose
        `errors` list every problem, one self-contained line each, `earlier_problems` (reading the
        environment, say) first.
        """
        values = {k: v for k, v in config.items() if v is not None and v != ""}
        problems = list(earlier_problems)
        for ours, hotglue in HOTGLUE_ALIASES.items():
            if ours not in values and config.get(hotglue) not in (None, ""):
                values[ours] = config[hotglue]
        if not values.get("api_url") and os.environ.get("BASE_URL"):
            values["api_url"] = os.environ["BASE_URL"]
        if singer_state_under_meltano(config, os.environ):
            values["state_output"] = "singer"
        if builtin_schema is not None:
            problems += builtin_problems(config, builtin_schema)
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            problems += [_describe(error) for error in exc.errors()]
        if problems:
            raise ConfigValidationError("Invalid target-cbx1 config", errors=problems) from None
        return settings


def singer_state_under_meltano(config: t.Mapping[str, t.Any], environ: t.Mapping[str, str]) -> bool:
    """Whether the run is under Meltano with state_output not set, so that it is singer: the tap's
    STATE is forwarded and HotGlue's state line never becomes the tap's bookmark.
    """
    unset = config.get("state_output") in (None, "")
    return unset and any(environ.get(name) for name in MELTANO_VARIABLES)


def environment_values(
    environ: t.Mapping[str, str], schema: t.Mapping[str, t.Any]
) -> tuple[dict[str, t.Any], list[str]]:
    """Settings given as TARGET_CBX1_<NAME> variables (`--config ENV`), for every setting of the
    config `schema` (the SDK's stream maps and the like too), and the problems reading them.

    Objects and lists are JSON text, booleans true/false; other values are checked as settings.
    """
    values: dict[str, t.Any] = {}
    problems = []
    for name, spec in schema.get("properties", {}).items():
        variable = ENV_PREFIX + name.upper()
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        kind = next((kind for kind in spec.get("type", ["string"]) if kind != "null"), "string")
        if kind in ("object", "array"):
            try:
                values[name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"{variable} is not valid JSON ({exc.msg})")
        elif kind == "boolean" and raw.lower() not in ("true", "false"):
            problems.append(f"{variable} must be true or false, not {raw!r}")
        else:
            values[name] = (raw.lower() == "true") if kind == "boolean" else raw
    return values, problems


def builtin_problems(config: t.Mapping[str, t.Any], schema: t.Mapping[str, t.Any]) -> list[str]:
    """What is wrong with the singer-sdk settings in a config, a line for each wrong setting."""
    own = set(Settings.model_fields) | set(HOTGLUE_ALIASES.values())
    problems = []
    for name, spec in schema.get("properties", {}).items():
        if name in own or name not in config:
            continue
        try:
            fastjsonschema.validate(spec, config[name], use_default=False, use_formats=False)
        except fastjsonschema.JsonSchemaValueException as exc:
            problems.append(f"{name}: {exc.message.removeprefix('data ').removeprefix('data.')}")
    return problems


def unknown_settings(config: t.Mapping[str, t.Any], schema: t.Mapping[str, t.Any]) -> str | None:
    """A line naming the config's settings the target does not know (typos, mostly), or None."""
    known = [*schema.get("properties", {}), *HOTGLUE_ALIASES.values()]
    unknown = sorted(name for name in config if name not in known)
    if not unknown:
        return None
    shown = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        shown.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return "Unknown settings, ignored: " + ", ".join(shown)


def config_schema(model: type[BaseModel]) -> dict[str, t.Any]:
    """The Singer config JSON schema of a settings model: types, defaults, descriptions, secrets.

    Value checks (ranges, URL safety) stay with the model, whose messages name the setting.
    """
    properties: dict[str, t.Any] = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        spec = json_schema_of(field.annotation)
        if "json_type" in extra:
            spec["type"] = [*t.cast("list[str]", extra["json_type"])]
        spec["type"] = [*spec["type"], "null"]
        default = field.get_default(call_default_factory=True)
        if default is not None and default is not PydanticUndefined:
            spec["default"] = default
        spec["description"] = field.description
        if extra.get("secret"):
            spec.update(secret=True, writeOnly=True)
        properties[name] = spec
    return {"type": "object", "properties": properties}


def json_schema_of(annotation: t.Any) -> dict[str, t.Any]:
    """The JSON schema of a setting's Python type (None left out: every setting may be null)."""
    origin, args = t.get_origin(annotation), t.get_args(annotation)
    if origin in (t.Union, types.UnionType):
        kinds = [json_schema_of(arg) for arg in args if arg is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
        return {"type": [kind for schema in kinds for kind in schema["type"]]}
    if origin is t.Literal:
        return {"type": ["string"], "enum": list(args)}
    if origin is dict:
        value_schema = json_schema_of(args[1]) if args and args[1] is not t.Any else None
        return {"type": ["object"], **({"additionalProperties": value_schema} if value_schema else {})}
    if origin is list:
        return {"type": ["array"], "items": json_schema_of(args[0])}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {
            "type": ["object"],
            "properties": {name: json_schema_of(f.annotation) for name, f in annotation.model_fields.items()},
            "required": [name for name, f in annotation.model_fields.items() if f.is_required()],
        }
    simple = {str: "string", SecretStr: "string", bool: "boolean", int: "integer", float: "number"}
    return {"type": [simple[annotation]]}


CONFIG_SCHEMA = config_schema(Settings)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(error: t.Any) -> str:
    """One readable line per validation error; never echoes the offending (maybe secret) value."""
    field = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "missing":
        hint = {
            "api_url": " (or set the BASE_URL environment variable)",
            "access_key": " (HotGlue: Code)",
            "org_id": " (HotGlue: OrgId)",
        }.get(field, "")
        return f"{field} is required{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}"
