"""Chaos mode: seeded random faults on every endpoint, each kind doing what it says, counted."""

from __future__ import annotations

import typing as t

import pytest
import requests

from target_cbx1.sandbox import Chaos, Sandbox
from target_cbx1.sandbox.chaos import CHAOS_KINDS, DEFAULT_RATES
from target_cbx1.sandbox.cli import main
from target_cbx1.sandbox.server import TOKEN_PATH
from tests.conftest import ACCESS_KEY, ORG_ID, account, lines_of, sandbox_config, schema
from tests.test_end_to_end import run_command

TOKEN_QUERY = {"authenticationType": "ACCESS_KEY", "code": ACCESS_KEY, "orgId": ORG_ID}
BULK = "/api/t/v1/targets/accounts/bulk"
RECORDS = "/api/t/v1/targets/integrations/HUBSPOT/ACCOUNT/records"


def chaos_sandbox(chaos: Chaos | None = None) -> Sandbox:
    return Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, seed=1, chaos=chaos)


def token_of(sandbox: Sandbox) -> str:
    """A session token, asked for again while chaos faults the token endpoint."""
    for _ in range(50):
        try:
            answer = requests.get(sandbox.url + TOKEN_PATH, params=TOKEN_QUERY, timeout=1)
        except requests.RequestException:
            continue
        if answer.status_code == 200 and answer.headers["Content-Type"] == "application/json":
            return str(answer.json()["data"]["sessionToken"])
    raise AssertionError("no token")


def post(sandbox: Sandbox, token: str, path: str, body: t.Any, timeout: float = 2) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", "x-organisation-id": ORG_ID}
    return requests.post(sandbox.url + path, json=body, headers=headers, timeout=timeout)


def accounts(*numbers: int) -> list[dict[str, str]]:
    return [{"domain": f"company{n}.com", "name": f"Company {n}"} for n in numbers]


def drive(sandbox: Sandbox, requests_count: int) -> list[str]:
    """What a client sees of a run of /bulk requests, one at a time: a status, or the error's class."""
    seen, token = [], token_of(sandbox)
    for number in range(requests_count):
        try:
            answer = post(sandbox, token, BULK, accounts(3 * number, 3 * number + 1, 3 * number + 2), 1)
        except requests.RequestException as error:
            seen.append(type(error).__name__)
            continue
        seen.append(f"{answer.status_code} {answer.headers.get('Content-Type')} {answer.text[:60]}")
        if answer.status_code == 401:
            token = token_of(sandbox)
    return seen


def test_the_same_seed_gives_the_same_faults_to_the_same_requests() -> None:
    runs = []
    for seed in (7, 7, 8):
        with chaos_sandbox(Chaos(seed=seed, slow_seconds=0.05)) as sandbox:
            seen = drive(sandbox, 60)
            assert sandbox.chaos is not None
            runs.append((seen, sandbox.chaos.history, sandbox.chaos.counts))
    assert runs[0] == runs[1]
    assert runs[0][1] != runs[2][1]
    assert 0 < sum(runs[0][2].values()) < 40  # about 20% of some 60 to 70 requests


def forced(kind: str, slow_seconds: float = 2) -> tuple[Sandbox, str]:
    """A started sandbox and a token it issued, then every request faulted with one kind."""
    sandbox = chaos_sandbox().start()
    token = token_of(sandbox)
    sandbox.chaos = Chaos(seed=1, rates={kind: 1.0}, slow_seconds=slow_seconds)
    return sandbox, token


@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [
        ("429", 429, "application/json"),
        ("429-bare", 429, "application/json"),
        ("500", 500, "text/html"),
        ("502", 502, "text/html"),
        ("503", 503, "text/html"),
        ("html", 200, "text/html"),
    ],
)
def test_answer_kinds_store_nothing(kind: str, status: int, content_type: str) -> None:
    sandbox, token = forced(kind)
    try:
        answer = post(sandbox, token, BULK, accounts(1, 2))
        assert (answer.status_code, answer.headers["Content-Type"]) == (status, content_type)
        assert answer.headers.get("Retry-After") == ("1" if kind == "429" else None)
        assert sandbox.records("accounts") == {}
        assert sandbox.chaos is not None
        assert sandbox.chaos.counts[kind] == 1
    finally:
        sandbox.stop()


@pytest.mark.parametrize(("kind", "written"), [("drop", False), ("drop-after", True), ("slow", True)])
@pytest.mark.parametrize("path", [BULK, RECORDS])
def test_connection_kinds(kind: str, written: bool, path: str) -> None:
    sandbox, token = forced(kind, slow_seconds=1)
    body: t.Any = accounts(1, 2)
    if path == RECORDS:
        body = {"records": [{"data": record, "lookupKey": record["domain"]} for record in body]}
    try:
        with pytest.raises(requests.ReadTimeout if kind == "slow" else requests.ConnectionError):
            post(sandbox, token, path, body, timeout=0.3)
        stored = sandbox.records("accounts") if path == BULK else sandbox.entities("ACCOUNT")
        assert set(stored) == ({"company1.com", "company2.com"} if written else set())
    finally:
        sandbox.stop()


def test_401_revokes_the_token() -> None:
    sandbox, token = forced("401")
    try:
        assert post(sandbox, token, BULK, accounts(1)).status_code == 401
        assert token not in sandbox.tokens
        assert sandbox.chaos is not None
        sandbox.chaos = None
        refused = post(sandbox, token, BULK, accounts(1))
        assert (refused.status_code, refused.json()["status"]["code"]) == (401, "AU401")
        assert post(sandbox, token_of(sandbox), BULK, accounts(1)).status_code == 200  # a new token works
    finally:
        sandbox.stop()


@pytest.mark.parametrize("path", [BULK, RECORDS])
def test_reject_names_one_record_by_lookup_key_and_omit_drops_a_result(path: str) -> None:
    body: t.Any = accounts(1, 2, 3)
    if path == RECORDS:
        body = {"records": [{"data": record, "lookupKey": record["domain"]} for record in body]}
    sandbox, token = forced("reject")
    try:
        rejected = post(sandbox, token, path, body)
        assert rejected.status_code == 400
        message = rejected.json()["status"]["message"]
        assert sum(f"lookupKey 'company{n}.com'" in message for n in (1, 2, 3)) == 1
        assert sandbox.records("accounts") == {}
        assert sandbox.entities("ACCOUNT") == {}
        sandbox.chaos = Chaos(seed=1, rates={"omit": 1.0})
        answer = post(sandbox, token, path, body)
        assert answer.status_code == 200
        assert len(answer.json()["data"]["results"]) == 2
        assert len(sandbox.records("accounts") or sandbox.entities("ACCOUNT")) == 3
    finally:
        sandbox.stop()


def test_kinds_that_do_not_apply_to_an_endpoint_are_no_fault() -> None:
    sandbox, token = forced("omit")
    try:
        answer = post(sandbox, token, "/api/t/v1/targets/accounts/upsert", accounts(1)[0])
        assert answer.status_code == 200
        sandbox.chaos = Chaos(seed=1, rates={"401": 1.0})
        assert requests.get(sandbox.url + TOKEN_PATH, params=TOKEN_QUERY, timeout=1).status_code == 200
        sandbox.chaos = Chaos(seed=1, rates={"503": 1.0})
        assert requests.get(sandbox.url + TOKEN_PATH, params=TOKEN_QUERY, timeout=1).status_code == 503
        assert sandbox.chaos.report()["requests"]["token"] == 1
    finally:
        sandbox.stop()


def test_counts_are_reported_as_json() -> None:
    with chaos_sandbox(Chaos(seed=3, rates={"500": 0.3, "429": 0.3})) as sandbox:
        drive(sandbox, 10)
        report = requests.get(sandbox.url + "/_sandbox/chaos", timeout=1).json()
        assert sandbox.chaos is not None
        assert report == sandbox.chaos.report()
        injected = [kind for _, _, kind in sandbox.chaos.history if kind is not None]
        assert report["faults"] == {kind: injected.count(kind) for kind in CHAOS_KINDS}
        assert report["faults"]["500"] > 0
        assert report["requests"]["bulk"] == 10
        assert report["seed"] == 3
    with chaos_sandbox() as quiet:
        assert requests.get(quiet.url + "/_sandbox/chaos", timeout=1).status_code == 404


def test_rates_are_checked() -> None:
    assert sum(DEFAULT_RATES.values()) == pytest.approx(0.2)
    assert set(DEFAULT_RATES) == set(CHAOS_KINDS)
    with pytest.raises(ValueError, match="unknown chaos kinds"):
        Chaos(seed=1, rates={"teapot": 0.1})
    with pytest.raises(ValueError, match="sum to at most 1"):
        Chaos(seed=1, rates={"500": 0.6, "502": 0.6})


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--chaos", "5", "--chaos-rate", "drop=0.5", "--chaos-slow-seconds", "1", "--exit-after", "0"])
        == 0
    )
    assert "chaos faults {}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--chaos", "5", "--chaos-rate", "drop=2"])
    assert "between 0 and 1" in capsys.readouterr().err


def test_the_target_survives_chaos(tmp_path: t.Any) -> None:
    """The real command against the default chaos mix: no traceback, and every success is what is stored."""
    with chaos_sandbox(Chaos(seed=2026, slow_seconds=1.5)) as sandbox:
        config = sandbox_config(
            sandbox,
            timeout=1,
            max_retries=8,
            backoff_base_seconds=0.01,
            backoff_max_seconds=0.05,
            batch_size=10,
        )
        messages = [schema("accounts"), *(account(number) for number in range(200))]
        result = run_command(config, tmp_path, lines_of(messages))
        assert result.returncode in (0, 1), result.stderr
        assert "Traceback" not in result.stderr
        entries = result.entries("accounts")
        assert sorted(entry["lookupKey"] for entry in entries) == sorted(
            f"company{n}.com" for n in range(200)
        )
        stored = sandbox.records("accounts")
        for entry in entries:
            if entry["success"]:
                assert entry["id"] == stored[entry["lookupKey"]].id, entry
        assert sandbox.chaos is not None
        assert sum(sandbox.chaos.counts.values()) > 0
