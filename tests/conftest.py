"""Shared test helpers: a mocked CBX1 API, Singer message builders, and a way to run the target."""

from __future__ import annotations

import io
import json
import os
import random
import typing as t
import uuid
from pathlib import Path

import pytest
import requests_mock

from target_cbx1.sandbox import Sandbox
from target_cbx1.target import TargetCBX1

API = "https://cbx1.test"
ACCESS_KEY = "ak-live-5f3c9e1d7a2b"
ORG_ID = "org-42"
TOKEN_URL = f"{API}/api/g/v1/auth/tokens"
FIXTURES = Path(__file__).parent / "fixtures"

ACCOUNT_SCHEMA = {
    "type": "object",
    "properties": {
        "crmAssociationId": {"type": ["string", "null"]},
        "name": {"type": ["string", "null"]},
        "domain": {"type": ["string", "null"]},
        "annualRevenue": {"type": ["number", "null"]},
        "createdAt": {"type": ["string", "null"], "format": "date-time"},
    },
}
CONTACT_SCHEMA = {
    "type": "object",
    "properties": {
        "crmAssociationId": {"type": ["string", "null"]},
        "email": {"type": ["string", "null"]},
        "firstName": {"type": ["string", "null"]},
    },
}


def fixture_json(name: str) -> t.Any:
    return json.loads((FIXTURES / name).read_text())


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def cbx1_id(key: str) -> str:
    """The id the mocked API gives a lookup key (stable, like an upsert store)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def make_config(**overrides: t.Any) -> dict[str, t.Any]:
    return {
        "api_url": API,
        "access_key": ACCESS_KEY,
        "org_id": ORG_ID,
        "backoff_base_seconds": 0,
        **overrides,
    }


def schema(stream: str, properties: dict | None = None, key_properties: list[str] | None = None) -> dict:
    default = ACCOUNT_SCHEMA if "account" in stream else CONTACT_SCHEMA
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": default if properties is None else {"type": "object", "properties": properties},
        "key_properties": key_properties or [],
    }


def record(stream: str, **fields: t.Any) -> dict:
    return {"type": "RECORD", "stream": stream, "record": fields}


def account(number: int, domain: str | None = None, **fields: t.Any) -> dict:
    defaults = {"crmAssociationId": f"001{number:05d}", "name": f"Company {number}"}
    return record(
        "accounts", **{**defaults, "domain": f"company{number}.com" if domain is None else domain, **fields}
    )


def contact(number: int, email: str | None = None, **fields: t.Any) -> dict:
    return record(
        "contacts",
        crmAssociationId=f"003{number:05d}",
        email=f"person{number}@example.com" if email is None else email,
        firstName=f"Person {number}",
        **fields,
    )


ENVELOPE_TYPES = ["null", "boolean", "string", "integer", "number", "object"]
ENVELOPE_SCHEMA = {
    "type": "object",
    "properties": {
        name: {"type": ENVELOPE_TYPES} for name in ("data", "sourceRecordId", "source", "lookupKey")
    },
}


def envelope_schema(stream: str) -> dict:
    """A SCHEMA message as CBX1's ETL writes it for envelope records."""
    return {"type": "SCHEMA", "stream": stream, "schema": ENVELOPE_SCHEMA, "key_properties": []}


def envelope(stream: str, lookup_key: t.Any = None, data: dict | None = None, **fields: t.Any) -> dict:
    """An envelope RECORD; fields left out (None) are absent, as the ETL leaves null fields out."""
    record = {"data": {"name": f"{lookup_key}"} if data is None else data, "lookupKey": lookup_key, **fields}
    return {"type": "RECORD", "stream": stream, "record": {k: v for k, v in record.items() if v is not None}}


def records_answer(reject: t.Mapping[str, str] | None = None, skip: t.Collection[str] = ()) -> t.Callable:
    """A records-endpoint responder: SUCCESS (or SKIPPED, or FAILED per `reject`) per record, shuffled."""
    reject = reject or {}

    def answer(request: t.Any, context: t.Any) -> dict:
        results = []
        for sent in request.json()["records"]:
            key = str(sent["lookupKey"]).strip().lower()
            if key in reject:
                results.append({"status": "FAILED", "entityId": None, "lookupKey": key, "error": reject[key]})
            else:
                status = "SKIPPED" if key in skip else "SUCCESS"
                results.append({"status": status, "entityId": cbx1_id(key), "lookupKey": key})
        random.Random(len(results)).shuffle(results)
        return {"status": {"code": "CM000", "message": "Success"}, "data": {"results": results}}

    return answer


def lines_of(messages: list[dict | str]) -> str:
    return "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)


def stdin_of(messages: list[dict | str]) -> io.StringIO:
    return io.StringIO(lines_of(messages))


def key_of_payload(payload: dict, field: str | None = None) -> str:
    if field is not None:
        return str(payload[field])
    return payload.get("domain") or payload.get("email") or ""


def bulk_answer(
    reject: t.Mapping[str, str] | None = None, drop: t.Collection[str] = (), field: str | None = None
) -> t.Callable:
    """A /bulk responder: a result per record in shuffled order; `reject` maps keys to errors."""
    reject = reject or {}

    def answer(request: t.Any, context: t.Any) -> dict:
        results = []
        for payload in request.json():
            key = key_of_payload(payload, field)
            if key in drop:
                continue
            if key in reject:
                results.append({"success": False, "id": None, "lookupKey": key, "error": reject[key]})
            else:
                results.append({"success": True, "id": cbx1_id(key), "lookupKey": key})
        random.Random(len(results)).shuffle(results)
        return {"status": {"code": "CM000", "message": "Success"}, "data": {"results": results}}

    return answer


def upsert_answer(request: t.Any, context: t.Any) -> dict:
    key = key_of_payload(request.json())
    return {"status": {"code": "CM000", "message": "Success"}, "data": {"id": cbx1_id(key)}}


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never depend on the developer's environment."""
    for name in ("BASE_URL", "JOB_ROOT", "JOB_ID", "OUTPUT_MAPPED_RECORD", "CONNECTOR_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in [name for name in os.environ if name.startswith("MELTANO_")]:  # `meltano invoke pytest`
        monkeypatch.delenv(name)


@pytest.fixture
def api() -> t.Iterator[requests_mock.Mocker]:
    """A mocked CBX1 API whose auth endpoint issues the recorded token."""
    with requests_mock.Mocker() as mocker:
        mocker.get(TOKEN_URL, json=fixture_json("auth_token.json"))
        yield mocker


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(
        "target_cbx1.session.ApiSession._wait", lambda session, seconds: waits.append(seconds)
    )
    return waits


@pytest.fixture
def sandbox() -> t.Iterator[Sandbox]:
    """The local CBX1 API on a free loopback port, stopped after the test."""
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID) as server:
        yield server


def sandbox_config(sandbox: Sandbox, **overrides: t.Any) -> dict[str, t.Any]:
    """A target config pointing at the sandbox, retrying without waiting."""
    return {**make_config(api_url=sandbox.url), **overrides}


class Run(t.NamedTuple):
    state: dict
    stdout: str


def run_target(config: dict, messages: list[dict | str], capsys: pytest.CaptureFixture[str]) -> Run:
    """Feed messages to a TargetCBX1 and return the state line it printed last."""
    target = TargetCBX1(config=config)
    target.listen(stdin_of(messages))
    stdout = capsys.readouterr().out
    return Run(json.loads(stdout.strip().splitlines()[-1]), stdout)


def posted(api: requests_mock.Mocker, suffix: str = "/bulk") -> list[t.Any]:
    """Bodies of the data requests the API received, in order."""
    return [r.json() for r in api.request_history if r.method == "POST" and r.path.endswith(suffix)]
