"""At DEBUG a failed request is logged as a cURL command, secrets as <placeholders>, that replays it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

import requests

from target_cbx1.redaction import REPLAY_BODY_LIMIT, mask, register_secret, replayable_command, replayable_url
from target_cbx1.sandbox import Sandbox
from tests.conftest import ACCESS_KEY, ORG_ID, account, lines_of, sandbox_config, schema
from tests.test_end_to_end import Result, run_command
from tests.test_security import HEADER_SECRET, assert_absent

DEBUG = {"LOGLEVEL": "DEBUG"}
CURL = re.compile(r"curl -X .*$", re.MULTILINE)


def curl_lines(result: Result) -> list[str]:
    return CURL.findall(result.stderr)


def filled_in(command: str, sandbox: Sandbox, access_key: str = ACCESS_KEY) -> str:
    """The command with its placeholders replaced by the sandbox's real secrets, as support would."""
    token = next(iter(sandbox.tokens), "")
    return (
        command.replace("<session token>", token)
        .replace("<access key>", access_key)
        .replace("<X-Api-Key value>", HEADER_SECRET)
    )


def replay(command: str) -> dict:
    """Run the command in bash with curl (or, without curl, as shlex reads it, with requests)."""
    if shutil.which("curl") and shutil.which("bash"):
        process = subprocess.run(
            ["bash", "-c", command.replace("curl ", "curl -sS ", 1)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(process.stdout)
    words = shlex.split(command, comments=True)
    method, url = words[2], words[3]
    headers = dict(words[i + 1].split(": ", 1) for i, word in enumerate(words) if word == "-H")
    if "--oauth2-bearer" in words:
        headers["Authorization"] = "Bearer " + words[words.index("--oauth2-bearer") + 1]
    data = words[words.index("--data-raw") + 1].encode() if "--data-raw" in words else None
    return requests.request(method, url, headers=headers, data=data, timeout=30).json()


def test_a_failed_request_is_logged_as_a_curl_command_that_replays_it_and_holds_no_secret(sandbox, tmp_path):
    sandbox.add_fault("status=500*2")
    config = sandbox_config(
        sandbox, max_retries=1, custom_headers=[{"name": "X-Api-Key", "value": HEADER_SECRET}]
    )
    messages = [schema("accounts"), account(1), account(2, name="O'Brien & Sons")]

    result = run_command(config, tmp_path, lines_of(messages), env=DEBUG)

    commands = curl_lines(result)
    assert len(commands) == 2  # each failed attempt
    assert "POST api/t/v1/targets/accounts/bulk failed (HTTP 500)" in result.stderr
    command = commands[-1]
    assert command.startswith(f"curl -X POST '{sandbox.url}/api/t/v1/targets/accounts/bulk' ")
    assert "--oauth2-bearer '<session token>'" in command  # curl sends Authorization: Bearer <token>
    for header in (
        f"x-organisation-id: {ORG_ID}",
        "X-Api-Key: <X-Api-Key value>",
        "Content-Type: application/json",
    ):
        assert f"-H '{header}'" in command
    assert_absent(result.stdout + result.stderr, ACCESS_KEY, HEADER_SECRET, *sandbox.tokens)
    assert sandbox.records("accounts") == {}

    answer = replay(filled_in(command, sandbox))

    assert answer["status"]["code"] == "CM000"
    assert [r["success"] for r in answer["data"]["results"]] == [True, True]
    assert sandbox.records("accounts")["company2.com"].record["name"] == "O'Brien & Sons"


def test_a_refused_token_request_is_logged_with_the_access_key_as_a_placeholder(sandbox, tmp_path):
    config = sandbox_config(sandbox, access_key="ak-wrong-1234567")

    result = run_command(config, tmp_path, lines_of([schema("accounts"), account(1)]), env=DEBUG)

    [command] = curl_lines(result)
    assert "The token request failed (HTTP 401)" in result.stderr
    assert f"/api/g/v1/auth/tokens?authenticationType=ACCESS_KEY&code=<access key>&orgId={ORG_ID}'" in command
    assert_absent(result.stdout + result.stderr, "ak-wrong-1234567", ACCESS_KEY)

    answer = replay(filled_in(command, sandbox))

    assert answer["status"]["code"] == "CM000"
    assert answer["data"]["sessionToken"] in sandbox.tokens


def test_a_network_error_is_logged_as_a_curl_command_too(sandbox, tmp_path):
    sandbox.add_fault("drop")
    config = sandbox_config(sandbox, max_retries=0)

    result = run_command(config, tmp_path, lines_of([schema("accounts"), account(1)]), env=DEBUG)

    assert "POST api/t/v1/targets/accounts/bulk failed (ConnectionError)" in result.stderr
    assert len(curl_lines(result)) == 1
    assert_absent(result.stdout + result.stderr, ACCESS_KEY, *sandbox.tokens)


def test_no_curl_command_is_logged_below_debug(sandbox, tmp_path):
    sandbox.add_fault("status=500")
    config = sandbox_config(sandbox, max_retries=0)

    result = run_command(
        config, tmp_path, lines_of([schema("accounts"), account(1)]), env={"LOGLEVEL": "INFO"}
    )

    assert "failed" in result.stderr
    assert curl_lines(result) == []


def test_a_long_body_is_cut_with_a_note_and_every_word_is_safely_quoted():
    body = json.dumps([{"name": 'it\'s $HOME `id` "quoted"', "pad": "x" * 20_000}]).encode()

    command = replayable_command("POST", "https://api.example/x", {"Accept": "*/*"}, body, "<token>")

    left_out = len(body) - REPLAY_BODY_LIMIT
    assert command.endswith(f"'  # body cut after 10,000 characters: {left_out:,} more were left out")
    words = shlex.split(command, comments=True)
    assert words[:4] == ["curl", "-X", "POST", "https://api.example/x"]
    assert words[-1] == body.decode()[:REPLAY_BODY_LIMIT]
    assert words[4:8] == ["-H", "Accept: */*", "--oauth2-bearer", "<token>"]


def test_placeholders_survive_masking_and_a_url_password_becomes_one():
    register_secret("pw-secret-31337")

    url = replayable_url("https://bob:pw-secret-31337@api.example:8443/api/t/v1/x")
    command = replayable_command("POST", url, {"Authorization": "Bearer <session token>"}, b"{}", "<x y>")

    assert url == "https://bob:<api_url password>@api.example:8443/api/t/v1/x"
    assert mask(command) == command
    assert "Bearer <session token>" in command
    assert mask("Authorization: Bearer sbx.abc") == "Authorization: Bearer ***"
