"""Settings: the config schema `--about` shows, and the validated settings the target runs on."""

from __future__ import annotations

import ipaddress
import json
import os
import typing as t
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError

try:
    __version__ = version("target-cbx1")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# HotGlue writes these keys into the job's config; each is accepted beside our own name.
HOTGLUE_ALIASES = {"access_key": "Code", "org_id": "OrgId", "access_token": "AccessToken"}

CONFIG_SCHEMA: dict[str, t.Any] = th.PropertiesList(
    th.Property(
        "api_url",
        th.StringType,
        description=(
            "CBX1 base URL, e.g. https://api.cbx1.com. When absent, the environment "
            "variable BASE_URL is used (HotGlue sets it). Must be https:// except for "
            "loopback hosts (127.0.0.1, localhost)."
        ),
    ),
    th.Property(
        "access_key",
        th.StringType,
        secret=True,
        description="CBX1 access key, exchanged for a session token. HotGlue's key `Code` is accepted.",
    ),
    th.Property(
        "org_id",
        th.CustomType({"type": ["string", "integer"]}),
        description=(
            "CBX1 organisation id, sent as the x-organisation-id header. HotGlue's key `OrgId` is accepted."
        ),
    ),
    th.Property(
        "access_token",
        th.StringType,
        secret=True,
        description=(
            "Optional cached session token (HotGlue's key `AccessToken` is accepted). "
            "A refreshed token is written back into the config file."
        ),
    ),
    th.Property(
        "expires_in",
        th.NumberType,
        description="Expiry of access_token as an absolute epoch second (HotGlue's convention).",
    ),
    th.Property(
        "process_as_batch",
        th.BooleanType,
        default=True,
        description="true: chunks POSTed to /bulk (BatchSink); false: one /upsert per record (RecordSink).",
    ),
    th.Property(
        "batch_size",
        th.IntegerType,
        default=20,
        description="Records per /bulk request.",
    ),
    th.Property(
        "add_stream_key",
        th.BooleanType,
        default=False,
        description='Add "stream": <stream name> to every payload.',
    ),
    th.Property(
        "metadata",
        th.CustomType({"type": ["object", "string", "null"]}),
        description="An object (or a JSON string of one) merged into every payload's `metadata` object.",
    ),
    th.Property(
        "inject_batch_ids",
        th.BooleanType,
        default=False,
        description=(
            "Add hgBatchId (md5 of JOB_ROOT:stream:chunk index) to every payload and "
            "to its record's state entry."
        ),
    ),
    th.Property(
        "custom_headers",
        th.ArrayType(
            th.ObjectType(
                th.Property("name", th.StringType, required=True),
                th.Property("value", th.StringType, required=True),
            )
        ),
        default=[],
        description="Extra HTTP headers for every request, as a list of {name, value} objects.",
    ),
    th.Property(
        "user_agent",
        th.StringType,
        default=f"target-cbx1/{__version__}",
        description="User-Agent header of every request.",
    ),
    th.Property(
        "lookup_fields",
        th.ObjectType(additional_properties=th.StringType),
        default={},
        description=(
            'Lookup field per stream, e.g. {"leads": "email"}. Default: domain for '
            "account/company streams, email for contact/lead/person streams, else the "
            "stream's single key property."
        ),
    ),
    th.Property(
        "max_retries",
        th.IntegerType,
        default=5,
        description="Retries of a request after its first attempt, for 408, 429, 5xx and network errors.",
    ),
    th.Property(
        "backoff_base_seconds",
        th.NumberType,
        default=1,
        description="First retry delay; each retry doubles it (with jitter).",
    ),
    th.Property(
        "backoff_max_seconds",
        th.NumberType,
        default=60,
        description="Longest delay between two retries, unless the server's Retry-After asks for more.",
    ),
    th.Property(
        "retry_after_max_seconds",
        th.NumberType,
        default=300,
        description="A Retry-After longer than this is treated as a failed request, not waited for.",
    ),
    th.Property(
        "timeout",
        th.NumberType,
        default=60,
        description="Seconds to wait for each HTTP response.",
    ),
    th.Property(
        "state_output",
        th.StringType,
        default="hotglue",
        allowed_values=["hotglue", "singer"],
        description="What the target prints on stdout. hotglue: one HotGlue state line with every "
        "record's outcome, at the end. singer: the tap's STATE messages, each forwarded once every "
        "record before it is written (for Meltano and other Singer runners).",
    ),
    th.Property(
        "results_path",
        th.StringType,
        description="File for the per-record outcomes in HotGlue's shape (bookmarks and summary), "
        "written at the end, in either state_output mode. In singer mode it is where CBX1 ids and "
        "errors go.",
    ),
    th.Property(
        "dry_run",
        th.BooleanType,
        default=False,
        description="Read, check and prepare every record, print the first request bodies and a "
        "summary on stderr, but never connect to the API and claim no success.",
    ),
    th.Property(
        "progress_interval_seconds",
        th.NumberType,
        default=10,
        description="Seconds between progress lines on stderr (records read, written, failed, rate); "
        "0 turns them off. A summary table per stream is logged at the end.",
    ),
    th.Property(
        "max_concurrency",
        th.IntegerType,
        default=8,
        description="Requests in flight at once per stream (1: strictly one at a time). Records with the "
        "same lookup key are never in flight together, and the state keeps input order.",
    ),
    th.Property(
        "max_requests_per_second",
        th.NumberType,
        description="Client-side ceiling on requests started in any one-second window, for the whole run "
        "(default: none). A 429 halves the rate, which then grows back gradually.",
    ),
    th.Property(
        "max_consecutive_request_failures",
        th.IntegerType,
        default=5,
        description="Requests in a row that may fail after all their retries before the run stops "
        "because the API looks down (the state so far is written; a rerun sends the rest).",
    ),
    th.Property(
        "incremental_state_path",
        th.StringType,
        description="File kept current with the state while running (atomic replace), and read on "
        "start to skip records already written. Default: HotGlue's "
        "/home/hotglue/$JOB_ID/incremental_target_state.json when JOB_ID is set and that folder "
        "exists; otherwise off.",
    ),
).to_dict()


class CustomHeader(BaseModel):
    """One extra request header."""

    name: str
    value: str


class Settings(BaseModel):
    """The validated settings of one run; defaults come from CONFIG_SCHEMA."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    api_url: str
    access_key: SecretStr
    org_id: str
    access_token: SecretStr | None = None
    expires_in: float | None = None
    process_as_batch: bool
    batch_size: int = Field(ge=1)
    add_stream_key: bool
    metadata: dict[str, t.Any] | None = None
    inject_batch_ids: bool
    custom_headers: list[CustomHeader]
    user_agent: str
    lookup_fields: dict[str, str]
    max_retries: int = Field(ge=0)
    backoff_base_seconds: float = Field(ge=0)
    backoff_max_seconds: float = Field(ge=0)
    retry_after_max_seconds: float = Field(ge=0)
    timeout: float = Field(gt=0)
    max_consecutive_request_failures: int = Field(ge=1)
    max_concurrency: int = Field(ge=1)
    state_output: t.Literal["hotglue", "singer"]
    results_path: str | None = None
    dry_run: bool
    progress_interval_seconds: float = Field(ge=0)
    max_requests_per_second: float | None = Field(default=None, gt=0)
    incremental_state_path: str | None = None

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

    @classmethod
    def from_config(cls, config: t.Mapping[str, t.Any]) -> Settings:
        """Resolve HotGlue aliases, BASE_URL and schema defaults, then validate."""
        values = {
            name: spec["default"] for name, spec in CONFIG_SCHEMA["properties"].items() if "default" in spec
        }
        values.update({k: v for k, v in config.items() if v is not None and v != ""})
        for ours, hotglue in HOTGLUE_ALIASES.items():
            if ours not in values and config.get(hotglue) not in (None, ""):
                values[ours] = config[hotglue]
        if not values.get("api_url") and os.environ.get("BASE_URL"):
            values["api_url"] = os.environ["BASE_URL"]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            errors = [_describe(error) for error in exc.errors()]
            raise ConfigValidationError(
                "Invalid target-cbx1 config: " + "; ".join(errors), errors=errors
            ) from None


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
