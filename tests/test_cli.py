"""The real `target-cbx1` command, as HotGlue runs it: stdin in, state line out, logs on stderr."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from target_cbx1.settings import CONFIG_SCHEMA
from tests.conftest import ACCESS_KEY, ORG_ID
from tests.stub_api import TOKEN, StubApi

COMMAND = str(Path(sys.executable).parent / "target-cbx1")
SAMPLE = Path(__file__).parent.parent / "examples" / "hubspot_export.singer"


def run_command(config: dict | None, tmp_path: Path, stdin: Path = SAMPLE) -> subprocess.CompletedProcess:
    args = [COMMAND]
    if config is not None:
        config_file = tmp_path / "config.json"
        config_file.write_text(json.dumps(config))
        args += ["--config", str(config_file)]
    with stdin.open() as source:
        return subprocess.run(args, stdin=source, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def stub():
    with StubApi(ACCESS_KEY, ORG_ID) as api:
        yield api


def test_sample_export_is_accounted_for_record_by_record(stub, tmp_path):
    result = run_command({"api_url": stub.url, "Code": ACCESS_KEY, "OrgId": ORG_ID}, tmp_path)

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    state = json.loads(result.stdout.splitlines()[-1])
    accounts, contacts = state["bookmarks"]["accounts"], state["bookmarks"]["contacts"]
    assert [e["externalId"] for e in accounts] == ["5001", "5002", "5003", "5004", "5005", "5002"]
    assert [e["success"] for e in accounts] == [True, True, False, False, True, True]
    assert accounts[2]["error"].startswith("domain is required")
    assert "invalid domain" in accounts[3]["error"]
    assert [e["success"] for e in contacts] == [True, True, False, False, True, True]
    assert contacts[2]["error"].startswith("email is required")
    assert "invalid email" in contacts[3]["error"]
    for entry in accounts + contacts:
        if entry["success"]:
            assert entry["id"] == stub.stored[entry["lookupKey"]]
    assert contacts[0]["id"] == contacts[4]["id"]  # same email, upserted twice, in two requests
    assert state["summary"] == {
        "accounts": {"success": 3, "fail": 2, "existing": 1, "updated": 0},
        "contacts": {"success": 4, "fail": 2, "existing": 0, "updated": 0},
    }
    assert "accounts/bulk: 3 records" in result.stderr
    assert ACCESS_KEY not in result.stderr
    assert TOKEN not in result.stderr


def test_record_mode_through_the_command(stub, tmp_path):
    config = {"api_url": stub.url, "access_key": ACCESS_KEY, "org_id": ORG_ID, "process_as_batch": False}

    result = run_command(config, tmp_path)

    assert result.returncode == 0, result.stderr
    assert {path.rsplit("/", 1)[-1] for path, _ in stub.requests} == {"upsert"}
    assert len(stub.requests) == 7  # 3 valid accounts + 4 valid contacts


def test_refreshed_token_is_written_back_to_the_config_file(stub, tmp_path):
    run_command({"api_url": stub.url, "Code": ACCESS_KEY, "OrgId": ORG_ID}, tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["AccessToken"] == TOKEN
    assert saved["expires_in"] > 0


def test_wrong_credentials_end_the_run_with_a_clear_message_and_no_secret(stub, tmp_path):
    wrong_key = "ak-wrong-0000000000"
    result = run_command({"api_url": stub.url, "access_key": wrong_key, "org_id": ORG_ID}, tmp_path)

    assert result.returncode != 0
    assert "CBX1 authentication failed" in result.stderr
    assert "Invalid access key" in result.stderr
    assert wrong_key not in result.stderr + result.stdout
    state = json.loads(result.stdout.splitlines()[-1])
    assert all(not entry["success"] for entries in state["bookmarks"].values() for entry in entries)


def test_plain_http_to_a_remote_host_is_refused_before_any_request(tmp_path):
    config = {"api_url": "http://api.cbx1.example.com", "access_key": ACCESS_KEY, "org_id": ORG_ID}

    result = run_command(config, tmp_path)

    assert result.returncode != 0
    assert "https://" in result.stderr
    assert ACCESS_KEY not in result.stderr


def test_about_lists_every_setting(tmp_path):
    result = subprocess.run(
        [COMMAND, "--about", "--format", "json"], capture_output=True, text=True, check=True
    )

    settings = json.loads(result.stdout)["settings"]["properties"]
    assert set(CONFIG_SCHEMA["properties"]) <= set(settings)
    for name in CONFIG_SCHEMA["properties"]:
        assert settings[name].get("description"), name
    assert settings["access_key"]["secret"] is True
    assert settings["batch_size"]["default"] == 20


def test_sigterm_sends_queued_records_and_prints_their_state(stub, tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"api_url": stub.url, "access_key": ACCESS_KEY, "org_id": ORG_ID}))
    lines = [{"type": "SCHEMA", "stream": "accounts", "schema": {"properties": {}}, "key_properties": []}]
    lines += [{"type": "RECORD", "stream": "accounts", "record": {"domain": f"c{n}.com"}} for n in range(25)]
    process = subprocess.Popen(
        [COMMAND, "--config", str(config_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    process.stdin.write("".join(json.dumps(line) + "\n" for line in lines))
    process.stdin.flush()
    deadline = time.monotonic() + 20
    while not stub.requests and time.monotonic() < deadline:  # the first full chunk of 20 went out
        time.sleep(0.05)
    time.sleep(0.5)  # let the reader take the last 5 records into the queue

    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    state = json.loads(stdout.splitlines()[-1])
    entries = state["bookmarks"]["accounts"]
    assert len(entries) == 25
    assert all(entry["id"] == stub.stored[entry["lookupKey"]] for entry in entries)
