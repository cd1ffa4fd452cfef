"""The sandbox keeps the CBX1 contract: auth, an upsert store, validation, shuffled results, faults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from target_cbx1.sandbox import FaultSpecError, Sandbox
from tests.conftest import ACCESS_KEY, ORG_ID

SANDBOX_COMMAND = str(Path(sys.executable).parent / "cbx1-sandbox")


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


@pytest.mark.parametrize("spec", ["teapot", "reject", "body=xml", "429=soon", "503*twice"])
def test_bad_fault_specs_are_refused_with_the_reason(spec):
    with pytest.raises(FaultSpecError):
        Sandbox(faults=[spec])


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


def test_command_line_refuses_a_bad_fault():
    result = subprocess.run(
        [SANDBOX_COMMAND, "--fault", "teapot"], capture_output=True, text=True, timeout=10, check=False
    )

    assert result.returncode == 2
    assert "unknown fault 'teapot'" in result.stderr
