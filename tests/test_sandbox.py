"""The sandbox keeps the CBX1 contract: auth, an upsert store, validation, shuffled results, faults."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import pytest
import requests

from target_cbx1.sandbox import FaultSpecError, Sandbox, cli
from target_cbx1.sandbox.faults import Fault
from tests.conftest import ACCESS_KEY, ORG_ID

SANDBOX_COMMAND = str(Path(sys.executable).parent / "cbx1-sandbox")
TARGET_COMMAND = str(Path(sys.executable).parent / "target-cbx1")
SAMPLE = Path(__file__).parent.parent / "examples" / "hubspot_export.singer"
BULK_PATH = "/api/t/v1/targets/accounts/bulk"
RECORDS_PATH = "/api/t/v1/targets/integrations/HUBSPOT/ACCOUNT/records"


def wait_until(condition: t.Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


class Client:
    """Just enough of a CBX1 client to talk to the sandbox the way the API is documented."""

    def __init__(self, sandbox: Sandbox, org_id: str = ORG_ID) -> None:
        self.url = sandbox.url
        self.session = requests.Session()
        self.session.headers["x-organisation-id"] = org_id

    def login(self, access_key: str = ACCESS_KEY) -> requests.Response:
        params = {"authenticationType": "ACCESS_KEY", "code": access_key, "orgId": ORG_ID}
        answer = self.session.get(f"{self.url}/api/g/v1/auth/tokens", params=params, timeout=5)
        if answer.ok:
            self.session.headers["Authorization"] = f"Bearer {answer.json()['data']['sessionToken']}"
        return answer

    def post(self, stream: str, endpoint: str, body: object, timeout: float = 5) -> requests.Response:
        return self.session.post(
            f"{self.url}/api/t/v1/targets/{stream}/{endpoint}", json=body, timeout=timeout
        )

    def bulk_results(self, stream: str, records: list[dict]) -> dict[str, dict]:
        answer = self.post(stream, "bulk", records)
        assert answer.status_code == 200, answer.text
        return {result["lookupKey"]: result for result in answer.json()["data"]["results"]}

    def ingest(
        self, source: str, object_type: str, body: object, timeout: float = 5, stream: bool = False
    ) -> requests.Response:
        """POST to the unified ingestion endpoint; a str body is sent as it is."""
        url = f"{self.url}/api/t/v1/targets/integrations/{source}/{object_type}/records"
        if isinstance(body, str):
            headers = {"Content-Type": "application/json"}
            return self.session.post(url, data=body.encode(), headers=headers, timeout=timeout, stream=stream)
        return self.session.post(url, json=body, timeout=timeout, stream=stream)

    def ingest_results(self, source: str, object_type: str, records: list[dict]) -> dict[str | None, dict]:
        answer = self.ingest(source, object_type, {"records": records})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == {"code": "CM000", "message": "Success"}
        return {result["lookupKey"]: result for result in answer.json()["data"]["results"]}


@pytest.fixture
def client(sandbox: Sandbox) -> Client:
    client = Client(sandbox)
    client.login()
    return client


def test_access_key_buys_a_session_token_with_its_lifetime(sandbox):
    answer = Client(sandbox).login()

    assert answer.status_code == 200
    body = answer.json()
    assert body["status"]["code"] == "CM000"
    assert body["data"]["maxAge"] == 3600
    assert body["data"]["sessionToken"]


def test_wrong_access_key_is_refused(sandbox):
    answer = Client(sandbox).login("wrong-key")

    assert answer.status_code == 401
    assert answer.json()["status"]["message"] == "Invalid access key or organisation"


def test_data_calls_need_a_live_token_and_the_right_organisation(sandbox):
    anonymous = Client(sandbox)
    assert anonymous.post("accounts", "bulk", [{"domain": "acme.com"}]).status_code == 401

    other_org = Client(sandbox, org_id="org-other")
    other_org.login()
    assert other_org.post("accounts", "bulk", [{"domain": "acme.com"}]).status_code == 403
    assert sandbox.records("accounts") == {}


def test_expired_token_gets_401():
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, token_max_age=0) as sandbox:
        client = Client(sandbox)
        client.login()

        answer = client.post("accounts", "bulk", [{"domain": "acme.com"}])

    assert answer.status_code == 401
    assert "expired" in answer.json()["status"]["message"]


def test_same_lookup_key_keeps_its_id_and_takes_the_latest_values(client, sandbox):
    first = client.bulk_results("accounts", [{"domain": "acme.com", "name": "Acme"}])
    again = client.bulk_results("accounts", [{"domain": "https://www.ACME.com/", "name": "Acme Inc"}])

    assert first["acme.com"]["id"] == again["acme.com"]["id"]
    stored = sandbox.records("accounts")["acme.com"]
    assert (stored.id, stored.record["name"], stored.writes) == (first["acme.com"]["id"], "Acme Inc", 2)


def test_bad_keys_get_per_record_errors_and_are_not_stored(client, sandbox):
    records = [{"domain": "acme.com"}, {"domain": "not a domain"}, {"name": "no domain"}]

    answer = client.post("accounts", "bulk", records).json()

    results = {result["lookupKey"]: result for result in answer["data"]["results"]}
    assert results["acme.com"]["success"] is True
    assert results["not a domain"] == {
        "success": False,
        "id": None,
        "lookupKey": "not a domain",
        "error": "Invalid domain",
    }
    assert results[None]["error"] == "domain is required"
    assert (answer["data"]["successful"], answer["data"]["failed"]) == (1, 2)
    assert list(sandbox.records("accounts")) == ["acme.com"]
    contacts = client.bulk_results("contacts", [{"email": "ann@acme"}])
    assert contacts["ann@acme"]["error"] == "Invalid email"


def test_bulk_results_come_back_shuffled(client):
    records = [{"email": f"person{n}@example.com"} for n in range(20)]

    answer = client.post("contacts", "bulk", records).json()

    keys = [result["lookupKey"] for result in answer["data"]["results"]]
    assert sorted(keys) == sorted(record["email"] for record in records)
    assert keys != [record["email"] for record in records]


def test_upsert_takes_one_record_and_rejects_a_bad_one_with_400(client):
    good = client.post("contacts", "upsert", {"email": "Ann@Acme.com"})
    bad = client.post("contacts", "upsert", {"email": "nobody"})

    assert good.status_code == 200
    assert good.json()["data"]["lookupKey"] == "ann@acme.com"
    assert bad.status_code == 400
    assert bad.json()["status"] == {"code": "CM400", "message": "Invalid email"}


def test_unknown_target_and_wrong_body_shapes_are_refused(client):
    assert client.post("opportunities", "bulk", []).status_code == 404
    assert client.post("accounts", "bulk", {"domain": "acme.com"}).status_code == 400
    assert client.post("accounts", "upsert", [{"domain": "acme.com"}]).status_code == 400


def test_other_streams_are_served_when_given_a_lookup_field():
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, lookup_fields={"test:odd name": "id"}) as sandbox:
        client = Client(sandbox)
        client.login()

        answer = client.post("test%3Aodd%20name", "bulk", [{"id": 7}, {"id": " V-42 "}])

        assert answer.status_code == 200, answer.text
        assert sandbox.records("test:odd name")["7"].record == {"id": 7}
        assert "V-42" in sandbox.records("test:odd name")  # text keys keep their case


def test_listing_shows_what_was_stored(client, sandbox):
    client.bulk_results("accounts", [{"domain": "acme.com", "name": "Acme"}])

    listing = requests.get(f"{sandbox.url}/_sandbox/records", timeout=5).json()

    assert listing["accounts"]["acme.com"]["record"] == {"domain": "acme.com", "name": "Acme"}
    assert listing["accounts"]["acme.com"]["id"] == sandbox.records("accounts")["acme.com"].id


def test_rate_limit_fault_sends_retry_after_then_passes(client, sandbox):
    sandbox.add_fault("429=7*2")

    answers = [client.post("accounts", "bulk", [{"domain": "acme.com"}]) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert [exchange.fault for exchange in sandbox.exchanges] == ["429", "429", None]


def test_gateway_fault_answers_with_an_html_page(client, sandbox):
    sandbox.add_fault("502")

    answer = client.post("accounts", "bulk", [{"domain": "acme.com"}])

    assert answer.status_code == 502
    assert answer.headers["Content-Type"] == "text/html"
    assert "<h1>502 Error</h1>" in answer.text
    assert sandbox.records("accounts") == {}


def test_always_faults_never_run_out(client, sandbox):
    sandbox.add_fault("503*always")

    statuses = {client.post("accounts", "bulk", [{"domain": "acme.com"}]).status_code for _ in range(5)}

    assert statuses == {503}


def test_dropped_connection_writes_nothing(client, sandbox):
    sandbox.add_fault("drop")

    with pytest.raises(requests.ConnectionError):
        client.post("accounts", "bulk", [{"domain": "acme.com"}])
    assert sandbox.records("accounts") == {}
    assert client.post("accounts", "bulk", [{"domain": "acme.com"}]).status_code == 200


def test_slow_answer_passes_the_client_timeout_but_the_write_happens(client, sandbox):
    sandbox.add_fault("slow=0.5")

    with pytest.raises(requests.ReadTimeout):
        client.post("accounts", "bulk", [{"domain": "acme.com"}], timeout=0.1)
    assert "acme.com" in sandbox.records("accounts")


def test_a_slow_answer_its_client_gave_up_on_is_no_longer_in_flight(client, sandbox):
    """The client closes the connection at its timeout: the sandbox stops counting the request in
    flight then, not when its slow answer would have gone out (the soak checks keys in flight so)."""
    sandbox.add_fault("slow=5")

    with pytest.raises(requests.ReadTimeout):
        client.post("accounts", "bulk", [{"domain": "acme.com"}], timeout=0.2)
    client.session.close()  # as the target does with a connection it gave up on
    wait_until(lambda: sandbox.in_flight == 0, seconds=3)

    (exchange,) = sandbox.exchanges
    assert sandbox.in_flight == 0
    assert exchange.answered_at is not None
    assert exchange.answered_at - exchange.received_at < 2


def test_omitted_results_and_broken_envelopes(client, sandbox):
    sandbox.add_fault("omit=2")
    sandbox.add_fault("not-cm000")
    sandbox.add_fault("body=truncated")
    records = [{"domain": f"c{n}.com"} for n in range(5)]

    omitted = client.post("accounts", "bulk", records).json()
    not_ok = client.post("accounts", "bulk", records)
    truncated = client.post("accounts", "bulk", records)

    assert len(omitted["data"]["results"]) == 3
    assert (not_ok.status_code, not_ok.json()["status"]["code"]) == (200, "CM500")
    assert truncated.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        truncated.json()


def test_reject_fault_names_the_bad_record_on_every_request_carrying_it(client, sandbox):
    sandbox.add_fault("reject=Bad.example.com")
    records = [{"domain": "good.example.com"}, {"domain": "bad.example.com"}]

    bulk = client.post("accounts", "bulk", records)
    good = client.post("accounts", "upsert", records[0])
    bad = client.post("accounts", "upsert", records[1])

    assert bulk.status_code == 400
    assert bulk.json()["status"]["message"] == "Validation failed for record 2 (lookupKey 'bad.example.com')"
    assert good.status_code == 200
    assert bad.status_code == 400
    assert list(sandbox.records("accounts")) == ["good.example.com"]


def test_faults_can_be_scripted_over_http(client, sandbox):
    added = requests.post(f"{sandbox.url}/_sandbox/faults", json=["504"], timeout=5)
    refused = requests.post(f"{sandbox.url}/_sandbox/faults", json=["teapot"], timeout=5)

    assert added.status_code == 200
    assert refused.status_code == 400
    assert "unknown fault 'teapot'" in refused.json()["status"]["message"]
    assert client.post("accounts", "bulk", [{"domain": "acme.com"}]).status_code == 504


@pytest.mark.parametrize(
    "spec",
    [
        "teapot",
        "reject",
        "body=xml",
        "429=soon",
        "503*twice",
        "redirect=300",
        "redirect=moved",
        "trickle=soon",
        "trickle=-1",
        "trickle=inf",
        "conflict=2",
        "answer",
        "answer=",
        "answer=*2",
        "answer={bad",
        "answer=[1]*2*3",
        "answer=NaN",
        "answer=@nope",
        "status",
        "status=101",
        "status=600",
        "status=4xx",
    ],
)
def test_bad_fault_specs_are_refused_with_the_reason(spec):
    with pytest.raises(FaultSpecError):
        Sandbox(faults=[spec])


@pytest.mark.parametrize(
    ("spec", "arg", "remaining"),
    [
        ('answer={"a":"x=y*2"}', '{"a":"x=y*2"}', 1),
        ('answer={"a":"x=y*2"}*3', '{"a":"x=y*2"}', 3),
        ('answer="*2"*always', '"*2"', None),
        ("answer=2*2", "2", 2),
        ("answer=@data-null*2", "@data-null", 2),
    ],
)
def test_an_answer_fault_takes_all_after_the_first_equals_sign_but_a_trailing_count(spec, arg, remaining):
    assert Fault.parse(spec) == Fault("answer", arg, remaining)


@pytest.mark.parametrize(
    ("spec", "status"),
    [
        ("redirect", 302),
        ("redirect=301", 301),
        ("redirect=302", 302),
        ("redirect=303", 303),
        ("redirect=307", 307),
        ("redirect=308", 308),
    ],
)
def test_redirect_fault_points_to_the_same_path_under_moved_and_stores_nothing(client, sandbox, spec, status):
    sandbox.add_fault(spec)

    answer = client.session.post(
        f"{sandbox.url}{BULK_PATH}", json=[{"domain": "acme.com"}], allow_redirects=False, timeout=5
    )

    assert answer.status_code == status
    assert answer.headers["Location"] == f"{sandbox.url}/moved{BULK_PATH}"
    assert answer.content == b""
    assert "Content-Type" not in answer.headers
    assert sandbox.records("accounts") == {}
    assert [(exchange.fault, exchange.status) for exchange in sandbox.exchanges] == [("redirect", status)]


def test_a_client_following_a_redirect_fault_finds_no_route_there(client, sandbox):
    sandbox.add_fault("redirect=307")

    answer = client.ingest("HUBSPOT", "ACCOUNT", {"records": [{"data": {}, "lookupKey": "acme.com"}]})

    assert [earlier.status_code for earlier in answer.history] == [307]
    assert answer.status_code == 404
    assert answer.json()["status"]["message"] == f"No route for POST /moved{RECORDS_PATH}"
    assert sandbox.entities("ACCOUNT") == {}
    assert [exchange.fault for exchange in sandbox.exchanges] == ["redirect"]  # /moved is no data request


def test_trickle_fault_sends_the_real_answer_a_byte_at_a_time(client, sandbox):
    sandbox.add_fault("trickle=1")
    started = time.monotonic()

    answer = client.post("accounts", "bulk", [{"domain": "acme.com"}], timeout=0.5)  # 0.5 s per read

    took = time.monotonic() - started
    assert answer.status_code == 200
    assert answer.json()["data"]["results"][0]["lookupKey"] == "acme.com"
    assert answer.elapsed.total_seconds() < 0.5  # the status line and headers came at once
    assert took >= 1
    assert "acme.com" in sandbox.records("accounts")
    wait_until(lambda: sandbox.in_flight == 0)
    [exchange] = sandbox.exchanges
    assert (exchange.fault, exchange.status) == ("trickle", 200)
    assert exchange.answered_at is not None
    assert exchange.answered_at - exchange.received_at >= 1  # answered when the last byte went out


def test_a_client_giving_up_on_a_trickle_is_let_go_quietly(client, sandbox, capfd):
    sandbox.add_fault("trickle=5")

    answer = client.ingest(
        "HUBSPOT", "ACCOUNT", {"records": [{"data": {}, "lookupKey": "acme.com"}]}, stream=True
    )
    assert answer.status_code == 200
    answer.close()
    wait_until(lambda: sandbox.in_flight == 0)

    [exchange] = sandbox.exchanges
    assert exchange.answered_at is not None
    assert exchange.answered_at - exchange.received_at < 4  # the sandbox stopped trickling
    assert "acme.com" in sandbox.entities("ACCOUNT")  # it was the real answer: the write happened
    assert client.post("accounts", "bulk", [{"domain": "acme.com"}]).status_code == 200
    assert "Traceback" not in capfd.readouterr().err


def test_conflict_fault_answers_the_first_bulk_result_twice_with_opposite_outcomes(client, sandbox):
    sandbox.add_fault("conflict*3")
    records = [{"domain": f"c{n}.com"} for n in range(4)]

    batch = client.post("accounts", "bulk", records).json()["data"]
    good = client.post("accounts", "bulk", [{"domain": "acme.com"}]).json()["data"]
    bad = client.post("accounts", "bulk", [{"domain": "not a domain"}]).json()["data"]

    first, twin, *rest = batch["results"]
    assert twin == {
        "success": False,
        "id": None,
        "lookupKey": first["lookupKey"],
        "error": "Duplicate record",
    }
    assert sorted(result["lookupKey"] for result in [first, *rest]) == [
        "c0.com",
        "c1.com",
        "c2.com",
        "c3.com",
    ]
    assert (batch["totalProcessed"], batch["successful"], batch["failed"]) == (4, 4, 0)  # what was written
    acme = sandbox.records("accounts")["acme.com"].id
    assert good["results"] == [
        {"success": True, "id": acme, "lookupKey": "acme.com"},
        {"success": False, "id": None, "lookupKey": "acme.com", "error": "Duplicate record"},
    ]
    real, flipped = bad["results"]
    assert real["error"] == "Invalid domain"
    assert flipped == {"success": True, "id": flipped["id"], "lookupKey": "not a domain"}
    assert uuid.UUID(flipped["id"])
    assert (bad["successful"], bad["failed"]) == (0, 1)
    assert sorted(sandbox.records("accounts")) == ["acme.com", "c0.com", "c1.com", "c2.com", "c3.com"]
    assert [exchange.fault for exchange in sandbox.exchanges] == ["conflict"] * 3


def test_conflict_fault_flips_records_results_and_leaves_upsert_alone(client, sandbox):
    sandbox.add_fault("conflict*4")
    record = {"data": {"name": "Acme"}, "lookupKey": "acme.com"}

    success = client.ingest("HUBSPOT", "ACCOUNT", {"records": [record]}).json()["data"]
    skipped = client.ingest("HUBSPOT", "ACCOUNT", {"records": [record]}).json()["data"]
    failed = client.ingest("HUBSPOT", "ACCOUNT", {"records": [{"data": {}, "lookupKey": "bad"}]}).json()[
        "data"
    ]
    upsert = client.post("accounts", "upsert", {"domain": "acme.com"})

    entity = sandbox.entities("ACCOUNT")["acme.com"].id
    duplicate = {"status": "FAILED", "entityId": None, "lookupKey": "acme.com", "error": "Duplicate record"}
    assert success["results"] == [
        {"status": "SUCCESS", "entityId": entity, "lookupKey": "acme.com"},
        duplicate,
    ]
    assert skipped["results"] == [
        {"status": "SKIPPED", "entityId": entity, "lookupKey": "acme.com"},
        duplicate,
    ]
    assert (skipped["successful"], skipped["failed"]) == (0, 0)
    real, flipped = failed["results"]
    assert real["error"] == "Invalid domain: bad"
    assert flipped == {"status": "SUCCESS", "entityId": flipped["entityId"], "lookupKey": "bad"}
    assert flipped["entityId"] != entity
    assert uuid.UUID(flipped["entityId"])
    assert list(sandbox.entities("ACCOUNT")) == ["acme.com"]
    assert upsert.status_code == 200
    assert upsert.json() == {
        "status": {"code": "CM000", "message": "Success"},
        "data": {"id": sandbox.records("accounts")["acme.com"].id, "lookupKey": "acme.com"},
    }
    assert [exchange.fault for exchange in sandbox.exchanges] == ["conflict"] * 4


def test_answer_fault_sends_exactly_its_json_text_and_stores_nothing(client, sandbox):
    text = '{"status":{"code":"CM000"},"data":{"note": "a=b*2"}}'
    sandbox.add_fault(f"answer={text}*2")

    bulk = client.post("accounts", "bulk", [{"domain": "acme.com"}])
    ingested = client.ingest("HUBSPOT", "ACCOUNT", {"records": [{"data": {}, "lookupKey": "acme.com"}]})
    passed = client.post("accounts", "upsert", {"domain": "acme.com"})

    assert [(answer.status_code, answer.text) for answer in (bulk, ingested)] == [(200, text)] * 2
    assert bulk.headers["Content-Type"] == "application/json"
    assert passed.json()["data"]["lookupKey"] == "acme.com"
    assert sandbox.entities("ACCOUNT") == {}
    assert list(sandbox.records("accounts")) == ["acme.com"]  # only the request after the fault
    assert [exchange.fault for exchange in sandbox.exchanges] == ["answer", "answer", None]


@pytest.mark.parametrize(
    ("name", "body"),
    [
        (
            "upsert-false",
            '{"status":{"code":"CM000","message":"Success"},'
            '"data":{"success":false,"error":"Rejected by rule"}}',
        ),
        ("data-null", '{"status":{"code":"CM000","message":"Success"},"data":null}'),
        ("no-data", '{"status":{"code":"CM000","message":"Success"}}'),
    ],
)
def test_answer_fault_can_name_a_canned_body(client, sandbox, name, body):
    added = requests.post(f"{sandbox.url}/_sandbox/faults", json=[f"answer=@{name}"], timeout=5)

    answer = client.post("contacts", "upsert", {"email": "ann@acme.com"})

    assert added.status_code == 200
    assert (answer.status_code, answer.text) == (200, body)
    assert sandbox.records("contacts") == {}
    assert [exchange.fault for exchange in sandbox.exchanges] == ["answer"]


@pytest.mark.parametrize(
    ("spec", "status", "message"),
    [
        ("status=409", 409, "Scripted 409"),
        ("status=404", 404, f"No route for POST {BULK_PATH}"),
        ("status=405", 405, "Method not allowed"),
        ("status=200", 200, "Scripted 200"),
        ("status=599", 599, "Scripted 599"),
    ],
)
def test_status_fault_answers_that_status_with_a_scripted_envelope(client, sandbox, spec, status, message):
    sandbox.add_fault(spec)

    answer = client.post("accounts", "bulk", [{"domain": "acme.com"}])

    assert answer.status_code == status
    assert answer.json() == {"status": {"code": f"CM{status}", "message": message}}
    assert sandbox.records("accounts") == {}
    assert [(exchange.fault, exchange.status) for exchange in sandbox.exchanges] == [("status", status)]


def test_status_fault_names_the_records_path_in_a_404_and_stores_nothing(client, sandbox):
    sandbox.add_fault("status=404")

    answer = client.ingest("HUBSPOT", "ACCOUNT", {"records": [{"data": {}, "lookupKey": "acme.com"}]})

    assert answer.status_code == 404
    assert answer.json()["status"] == {"code": "CM404", "message": f"No route for POST {RECORDS_PATH}"}
    assert sandbox.entities("ACCOUNT") == {}


def test_status_fault_without_content_keeps_the_connection_usable(client, sandbox):
    for spec in ("status=204", "status=205", "status=304"):
        sandbox.add_fault(spec)

    empty = [client.post("accounts", "bulk", [{"domain": "acme.com"}]) for _ in range(3)]
    after = client.post("accounts", "bulk", [{"domain": "acme.com"}])

    assert [(answer.status_code, answer.content) for answer in empty] == [(204, b""), (205, b""), (304, b"")]
    assert "Content-Length" not in empty[0].headers
    assert after.status_code == 200
    assert [exchange.fault for exchange in sandbox.exchanges] == ["status", "status", "status", None]


def test_latency_delays_every_answer():
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, latency_ms=200) as sandbox:
        answer = Client(sandbox).login()

    assert answer.elapsed.total_seconds() >= 0.2


def test_command_line_prints_its_url_serves_and_stops_by_itself():
    process = subprocess.Popen(
        [
            SANDBOX_COMMAND,
            "--port",
            "0",
            "--exit-after",
            "20",
            "--access-key",
            ACCESS_KEY,
            "--org-id",
            ORG_ID,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        params = {"authenticationType": "ACCESS_KEY", "code": ACCESS_KEY, "orgId": ORG_ID}
        answer = requests.get(f"{url}/api/g/v1/auth/tokens", params=params, timeout=5)
        assert answer.status_code == 200
    finally:
        process.terminate()
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "stopped after 0 data requests" in stderr


def test_command_line_writes_the_target_config_in_a_temporary_directory_never_the_working_one(tmp_path):
    """The config it prints holds the access key, and target-cbx1 writes its session token back into
    it: it goes in a temporary directory, owner-readable only, and is gone once the sandbox stops.
    """
    workdir, temp_root = tmp_path / "work", tmp_path / "tmp"
    workdir.mkdir()
    temp_root.mkdir()
    command = [SANDBOX_COMMAND, "--exit-after", "30", "--access-key", ACCESS_KEY, "--org-id", ORG_ID]
    environment = {**os.environ, "TMPDIR": str(temp_root)}
    process = subprocess.Popen(
        command, cwd=workdir, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        config_line = process.stdout.readline()
        assert config_line.startswith("target-cbx1 config for this sandbox: "), config_line
        config_file = Path(config_line.split(": ", 1)[1].strip())
        assert config_file.is_relative_to(temp_root)
        assert json.loads(config_file.read_text()) == {
            "api_url": url,
            "access_key": ACCESS_KEY,
            "org_id": ORG_ID,
        }
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

        with SAMPLE.open() as stdin:
            target = subprocess.run(
                [TARGET_COMMAND, "--config", str(config_file)],
                stdin=stdin,
                cwd=workdir,
                env=environment,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        assert target.returncode == 0, target.stderr[-3000:]
        assert json.loads(config_file.read_text())["access_token"]  # written back, beside the key
    finally:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert list(workdir.iterdir()) == []
    assert list(temp_root.iterdir()) == []


@pytest.mark.parametrize("config_file", [None, ".demo/sandbox.json"])
def test_the_target_config_is_removed_when_the_sandbox_stops(tmp_path, monkeypatch, capsys, config_file):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(cli.signal, "signal", lambda *_: None)  # leave pytest's own handlers alone
    written: list[Path] = []
    write_target_config = cli.write_target_config

    def spy(*args: t.Any) -> Path:
        path = write_target_config(*args)
        assert json.loads(path.read_text())["access_key"] == ACCESS_KEY
        written.append(path)
        return path

    monkeypatch.setattr(cli, "write_target_config", spy)
    options = ["--config-file", config_file] if config_file else []

    assert cli.main(["--exit-after", "0", "--access-key", ACCESS_KEY, "--org-id", ORG_ID, *options]) == 0

    [path] = written
    assert f"target-cbx1 config for this sandbox: {path}\n" in capsys.readouterr().out
    assert not path.exists()
    if config_file is None:  # nothing at all in the working directory
        assert path.is_relative_to(tmp_path / "tmp")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
        assert list((tmp_path / "tmp").iterdir()) == []
    else:  # only where it was asked to go, and removed
        assert path == Path(config_file)
        assert list((tmp_path / ".demo").iterdir()) == []


def test_a_target_config_that_cannot_be_written_stops_the_sandbox_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.signal, "signal", lambda *_: None)
    (tmp_path / "file").write_text("")

    assert cli.main(["--exit-after", "0", "--config-file", str(tmp_path / "file" / "config.json")]) == 2
    assert "cannot write the target-cbx1 config" in capsys.readouterr().err


def test_records_endpoint_keeps_one_id_per_lookup_key_and_the_latest_data(client, sandbox):
    first = client.ingest(
        "HUBSPOT",
        "ACCOUNT",
        {"records": [{"data": {"name": "Acme"}, "sourceRecordId": "0015g00000ABC", "lookupKey": "acme.com"}]},
    ).json()
    again = client.ingest_results(
        "HUBSPOT", "ACCOUNT", [{"data": {"name": "Acme Inc"}, "lookupKey": "https://www.ACME.com/"}]
    )

    assert first["data"]["totalProcessed"] == 1
    assert (first["data"]["successful"], first["data"]["failed"]) == (1, 0)
    [result] = first["data"]["results"]
    assert result["status"] == "SUCCESS"
    assert result["lookupKey"] == "acme.com"
    assert again["acme.com"] == {"status": "SUCCESS", "entityId": result["entityId"], "lookupKey": "acme.com"}
    stored = sandbox.entities("ACCOUNT")["acme.com"]
    assert (stored.id, stored.data, stored.source, stored.writes) == (
        result["entityId"],
        {"name": "Acme Inc"},
        "HUBSPOT",
        2,
    )
    assert stored.source_record_id is None  # the second record sent none
    assert sandbox.entities("CONTACT") == {}
    assert sandbox.records("accounts") == {}  # /records has its own store


def test_same_data_from_the_same_source_is_skipped(client, sandbox):
    record = {"data": {"email": "ann@acme.com", "firstName": "Ann"}, "lookupKey": "Ann@Acme.com"}
    first = client.ingest_results("HUBSPOT", "CONTACT", [record])["ann@acme.com"]

    same = client.ingest("HUBSPOT", "CONTACT", {"records": [{**record, "source": "HUBSPOT"}]}).json()
    assert same["data"] == {
        "totalProcessed": 1,
        "successful": 0,
        "failed": 0,
        "results": [{"status": "SKIPPED", "entityId": first["entityId"], "lookupKey": "ann@acme.com"}],
    }
    assert sandbox.entities("CONTACT")["ann@acme.com"].writes == 1

    changed = {**record, "data": {**record["data"], "firstName": "Anne"}}
    assert client.ingest_results("HUBSPOT", "CONTACT", [changed])["ann@acme.com"]["status"] == "SUCCESS"
    assert sandbox.entities("CONTACT")["ann@acme.com"].writes == 2

    moved = client.ingest_results("SALESFORCE", "CONTACT", [{**changed, "sourceRecordId": "003XYZ"}])
    assert moved["ann@acme.com"] == {
        "status": "SUCCESS",
        "entityId": first["entityId"],
        "lookupKey": "ann@acme.com",
    }
    stored = sandbox.entities("CONTACT")["ann@acme.com"]
    assert (stored.source, stored.source_record_id, stored.writes) == ("SALESFORCE", "003XYZ", 3)


@pytest.mark.parametrize(
    ("object_type", "record", "lookup_key", "error"),
    [
        ("ACCOUNT", {"data": {}}, None, "lookupKey is required"),
        ("ACCOUNT", {"data": {}, "lookupKey": None}, None, "lookupKey is required"),
        ("ACCOUNT", {"data": {}, "lookupKey": 42}, None, "lookupKey is required"),
        ("ACCOUNT", {"lookupKey": "   "}, None, "lookupKey is required"),  # checked before data
        ("ACCOUNT", {"lookupKey": "acme.com"}, "acme.com", "data is required"),
        ("ACCOUNT", {"data": ["acme"], "lookupKey": "not a domain"}, "not a domain", "data is required"),
        (
            "ACCOUNT",
            {"data": {}, "source": "SALESFORCE", "lookupKey": "bad"},  # checked before the domain
            "bad",
            "source 'SALESFORCE' does not match the request's source 'HUBSPOT'",
        ),
        (
            "CONTACT",
            {"data": {}, "source": "hubspot", "lookupKey": "ann@acme.com"},
            "ann@acme.com",
            "source 'hubspot' does not match the request's source 'HUBSPOT'",
        ),
        ("ACCOUNT", {"data": {}, "lookupKey": "bad"}, "bad", "Invalid domain: bad"),
        (
            "ACCOUNT",
            {"data": {}, "lookupKey": " Not A.Domain "},
            "not a.domain",
            "Invalid domain:  Not A.Domain ",
        ),
        ("CONTACT", {"data": {}, "lookupKey": "Ann@Acme"}, "ann@acme", "Invalid email: Ann@Acme"),
        ("CONTACT", {"data": {}, "lookupKey": "acme.com"}, "acme.com", "Invalid email: acme.com"),
    ],
)
def test_records_breaking_a_rule_fail_with_its_error_and_are_not_stored(
    client, sandbox, object_type, record, lookup_key, error
):
    good = {"data": {"n": 1}, "lookupKey": "good.com" if object_type == "ACCOUNT" else "good@good.com"}

    answer = client.ingest("HUBSPOT", object_type, {"records": [good, record]})

    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert (data["totalProcessed"], data["successful"], data["failed"]) == (2, 1, 1)
    [failed] = [result for result in data["results"] if result["status"] == "FAILED"]
    assert failed == {"status": "FAILED", "entityId": None, "lookupKey": lookup_key, "error": error}
    assert list(sandbox.entities(object_type)) == [good["lookupKey"]]


@pytest.mark.parametrize(
    ("source", "object_type", "body", "message"),
    [
        (
            "PIPEDRIVE",
            "ACCOUNT",
            '{"records": [{}]}',
            "Unknown source 'PIPEDRIVE': this API ingests HUBSPOT, MARKETO, SALESFORCE",
        ),
        (
            "hubspot",
            "ACCOUNT",
            '{"records": [{}]}',
            "Unknown source 'hubspot': this API ingests HUBSPOT, MARKETO, SALESFORCE",
        ),
        ("HUBSPOT", "DEAL", '{"records": [{}]}', "Unknown object type 'DEAL': expected ACCOUNT or CONTACT"),
        (
            "HUBSPOT",
            "account",
            '{"records": [{}]}',
            "Unknown object type 'account': expected ACCOUNT or CONTACT",
        ),
        ("HUBSPOT", "ACCOUNT", '{"records": [', "Request body is not valid JSON: "),
        ("HUBSPOT", "ACCOUNT", "", "Request body is not valid JSON: "),
        ("HUBSPOT", "ACCOUNT", '[{"lookupKey": "acme.com"}]', 'The body must be {"records": [...]}'),
        (
            "HUBSPOT",
            "ACCOUNT",
            '{"records": {"lookupKey": "acme.com"}}',
            'The body must be {"records": [...]}',
        ),
        ("HUBSPOT", "ACCOUNT", '{"data": []}', 'The body must be {"records": [...]}'),
        ("HUBSPOT", "ACCOUNT", '{"records": []}', "records must not be empty"),
        ("HUBSPOT", "CONTACT", '{"records": [{}, "ann@acme.com"]}', "record 2 is not a JSON object"),
    ],
)
def test_records_requests_of_the_wrong_shape_are_refused_with_400(
    client, sandbox, source, object_type, body, message
):
    answer = client.ingest(source, object_type, body)

    assert answer.status_code == 400
    assert answer.json()["status"]["code"] == "CM400"
    assert answer.json()["status"]["message"].startswith(message)
    assert sandbox.entities("ACCOUNT") == sandbox.entities("CONTACT") == {}


def test_other_sources_are_ingested_when_configured():
    with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, sources=["ZOHO", "HUBSPOT"]) as sandbox:
        client = Client(sandbox)
        client.login()

        zoho = client.ingest("ZOHO", "ACCOUNT", {"records": [{"data": {}, "lookupKey": "acme.com"}]})
        marketo = client.ingest("MARKETO", "ACCOUNT", {"records": [{"data": {}, "lookupKey": "acme.com"}]})

    assert zoho.status_code == 200
    assert sandbox.entities("ACCOUNT")["acme.com"].source == "ZOHO"
    assert marketo.status_code == 400
    assert marketo.json()["status"]["message"] == "Unknown source 'MARKETO': this API ingests HUBSPOT, ZOHO"


@pytest.mark.parametrize("sources", [["hubspot"], ["HUB SPOT"], []])
def test_sources_must_be_upper_case_names(sources):
    with pytest.raises(ValueError, match="HUBSPOT"):
        Sandbox(sources=sources)


def test_records_results_come_back_shuffled_but_complete(client):
    records = [{"data": {"n": n}, "lookupKey": f"person{n}@example.com"} for n in range(20)]

    answer = client.ingest("MARKETO", "CONTACT", {"records": records}).json()

    keys = [result["lookupKey"] for result in answer["data"]["results"]]
    assert sorted(keys) == sorted(record["lookupKey"] for record in records)
    assert keys != [record["lookupKey"] for record in records]
    assert {result["status"] for result in answer["data"]["results"]} == {"SUCCESS"}


def test_records_need_a_live_token_and_the_right_organisation(sandbox):
    body = {"records": [{"data": {}, "lookupKey": "acme.com"}]}
    anonymous = Client(sandbox).ingest("HUBSPOT", "ACCOUNT", body)
    other_org = Client(sandbox, org_id="org-other")
    other_org.login()
    refused = other_org.ingest("HUBSPOT", "ACCOUNT", body)
    unknown_source = Client(sandbox).ingest("PIPEDRIVE", "ACCOUNT", body)  # the session is checked first

    assert anonymous.status_code == 401
    assert anonymous.json()["status"]["code"] == "AU401"
    assert refused.status_code == 403
    assert unknown_source.status_code == 401
    assert sandbox.entities("ACCOUNT") == {}
    assert [exchange.status for exchange in sandbox.exchanges] == [401, 403, 401]


def test_reject_fault_names_the_bad_record_on_records_requests(client, sandbox):
    sandbox.add_fault("reject=bad.example.com")
    records = [
        {"data": {}, "lookupKey": "good.example.com"},
        {"data": {}, "lookupKey": "https://Bad.example.com"},
    ]

    rejected = client.ingest("HUBSPOT", "ACCOUNT", {"records": records})
    passed = client.ingest("HUBSPOT", "ACCOUNT", {"records": records[:1]})

    assert rejected.status_code == 400
    assert rejected.json()["status"] == {
        "code": "CM400",
        "message": "Validation failed for record 2 (lookupKey 'bad.example.com')",
    }
    assert passed.status_code == 200
    assert list(sandbox.entities("ACCOUNT")) == ["good.example.com"]
    assert [exchange.fault for exchange in sandbox.exchanges] == ["reject", None]


def test_omit_and_rate_limit_faults_apply_to_records_requests(client, sandbox):
    sandbox.add_fault("omit=1")
    sandbox.add_fault("429=3")
    records = [{"data": {}, "lookupKey": f"c{n}.com"} for n in range(4)]

    omitted = client.ingest("HUBSPOT", "ACCOUNT", {"records": records}).json()
    limited = client.ingest("HUBSPOT", "ACCOUNT", {"records": records})
    passed = client.ingest("HUBSPOT", "ACCOUNT", {"records": records}).json()

    assert omitted["data"]["totalProcessed"] == 4
    assert len(omitted["data"]["results"]) == 3
    assert len(sandbox.entities("ACCOUNT")) == 4  # all were written; one result is missing
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert {result["status"] for result in passed["data"]["results"]} == {"SKIPPED"}
    assert [exchange.fault for exchange in sandbox.exchanges] == ["omit", "429", None]


def test_exchanges_record_the_records_endpoint_its_source_and_object_type(client, sandbox):
    client.bulk_results("accounts", [{"domain": "acme.com"}])
    records = [{"data": {}, "lookupKey": " Ann@Acme.com "}, {"data": {}}, {"data": {}, "lookupKey": ""}]
    client.ingest("SALESFORCE", "CONTACT", {"records": records})

    bulk, ingested = sandbox.exchanges
    assert (bulk.endpoint, bulk.stream, bulk.source) == ("bulk", "accounts", None)
    assert (ingested.endpoint, ingested.stream, ingested.source) == ("records", "CONTACT", "SALESFORCE")
    assert ingested.lookup_keys == ("ann@acme.com", None, None)
    assert ingested.status == 200
    assert ingested.answered_at is not None
    assert ingested.answered_at >= ingested.received_at
    assert sandbox.peak_in_flight == 1
    assert sandbox.in_flight == 0


def test_entities_listing_shows_what_records_stored(client, sandbox):
    client.ingest(
        "HUBSPOT",
        "ACCOUNT",
        {"records": [{"data": {"name": "Acme"}, "sourceRecordId": "0015g00000ABC", "lookupKey": "acme.com"}]},
    )

    listing = requests.get(f"{sandbox.url}/_sandbox/entities", timeout=5).json()

    assert listing == {
        "ACCOUNT": {
            "acme.com": {
                "id": sandbox.entities("ACCOUNT")["acme.com"].id,
                "data": {"name": "Acme"},
                "source": "HUBSPOT",
                "sourceRecordId": "0015g00000ABC",
                "writes": 1,
            }
        },
        "CONTACT": {},
    }


def test_command_line_ingests_the_sources_it_is_given():
    process = subprocess.Popen(
        [
            SANDBOX_COMMAND,
            "--exit-after",
            "20",
            "--access-key",
            ACCESS_KEY,
            "--org-id",
            ORG_ID,
            "--source",
            "PIPEDRIVE",
            "--source",
            "HUBSPOT",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        session = requests.Session()
        params = {"authenticationType": "ACCESS_KEY", "code": ACCESS_KEY, "orgId": ORG_ID}
        token = session.get(f"{url}/api/g/v1/auth/tokens", params=params, timeout=5).json()
        session.headers["Authorization"] = f"Bearer {token['data']['sessionToken']}"
        session.headers["x-organisation-id"] = ORG_ID
        body = {"records": [{"data": {}, "lookupKey": "acme.com"}]}
        paths = [
            f"{url}/api/t/v1/targets/integrations/{source}/ACCOUNT/records"
            for source in ("PIPEDRIVE", "SALESFORCE")
        ]
        pipedrive, salesforce = (session.post(path, json=body, timeout=5) for path in paths)
    finally:
        process.terminate()
    _, stderr = process.communicate(timeout=10)

    assert pipedrive.status_code == 200
    assert salesforce.status_code == 400
    assert (
        salesforce.json()["status"]["message"]
        == "Unknown source 'SALESFORCE': this API ingests HUBSPOT, PIPEDRIVE"
    )
    assert process.returncode == 0
    assert "stopped after 2 data requests" in stderr
    assert "entities {'ACCOUNT': 1, 'CONTACT': 0}" in stderr


def test_command_line_refuses_a_lower_case_source():
    result = subprocess.run(
        [SANDBOX_COMMAND, "--source", "hubspot"], capture_output=True, text=True, timeout=10, check=False
    )

    assert result.returncode == 2
    assert "source 'hubspot' must be upper case" in result.stderr


def test_command_line_refuses_a_bad_fault():
    result = subprocess.run(
        [SANDBOX_COMMAND, "--fault", "teapot"], capture_output=True, text=True, timeout=10, check=False
    )

    assert result.returncode == 2
    assert "unknown fault 'teapot'" in result.stderr


def test_trickle_head_sends_even_the_status_line_a_byte_at_a_time(sandbox):
    sandbox.add_fault("trickle-head=1")
    token = requests.get(
        f"{sandbox.url}/api/g/v1/auth/tokens",
        params={"authenticationType": "ACCESS_KEY", "code": sandbox.access_key, "orgId": sandbox.org_id},
        timeout=5,
    ).json()["data"]["sessionToken"]
    started = time.monotonic()

    with socket.create_connection(("127.0.0.1", sandbox.server.server_address[1]), timeout=5) as connection:
        body = b'[{"domain": "acme.com"}]'
        request = (
            f"POST /api/t/v1/targets/accounts/bulk HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"x-organisation-id: {sandbox.org_id}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        connection.sendall(request.encode() + body)
        first = connection.recv(100)

    assert len(first) == 1  # no more than a byte had come
    assert time.monotonic() - started < 1
