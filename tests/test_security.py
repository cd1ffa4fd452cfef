"""Secrets never leave or travel elsewhere; TLS stays on; paths and headers cannot be injected; files."""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from target_cbx1.errors import RedirectedError
from target_cbx1.sandbox import Sandbox
from target_cbx1.target import TargetCBX1
from tests.conftest import (
    ACCESS_KEY,
    API,
    ORG_ID,
    TOKEN_URL,
    account,
    bulk_answer,
    fixture_json,
    lines_of,
    make_config,
    record,
    run_target,
    sandbox_config,
    schema,
    stdin_of,
)
from tests.test_end_to_end import run_command

BULK = f"{API}/api/t/v1/targets/accounts/bulk"
HEADER_SECRET = "hdr-secret-9f8e7d6c"
TOKEN = fixture_json("auth_token.json")["data"]["sessionToken"]


def forms(secret: str) -> list[str]:
    """A secret as it appears raw, URL-encoded and JSON-escaped."""
    return [secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]]


def assert_absent(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in text, form


# Secrets never leave


def test_a_server_echoing_secrets_into_record_errors_never_puts_them_in_the_state(api, capsys, tmp_path):
    echo = f"bad record; request had code={quote(ACCESS_KEY)} auth Bearer {TOKEN} header {HEADER_SECRET}"
    api.post(BULK, json=bulk_answer(reject={"company1.com": echo}))
    results = tmp_path / "results.json"
    config = make_config(
        custom_headers=[{"name": "X-Api-Key", "value": HEADER_SECRET}],
        results_path=str(results),
        incremental_state_path=str(tmp_path / "incremental.json"),
    )

    run = run_target(config, [schema("accounts"), account(1)], capsys)

    error = run.state["bookmarks"]["accounts"][0]["error"]
    assert "bad record" in error
    for text in (run.stdout, results.read_text(), (tmp_path / "incremental.json").read_text()):
        assert_absent(text, ACCESS_KEY, TOKEN, HEADER_SECRET)


@pytest.mark.parametrize(
    "answer",
    [
        '{"status": {"code": "CM000"}, "data": {"token": "tok-unregistered-4242"}}',
        '{"status": {"code": "CM000"}, "data": {"sessionToken": {"jwt": "tok-unregistered-4242"}}}',
        "sessionToken=tok-unregistered-4242",
    ],
)
def test_an_unreadable_token_answer_is_described_never_quoted(api, answer):
    api.get(TOKEN_URL, text=answer)
    api.post(BULK, json=bulk_answer())

    with pytest.raises(Exception, match="CBX1 authentication failed") as caught:
        TargetCBX1(config=make_config()).listen(stdin_of([schema("accounts"), account(1)]))

    message = str(caught.value)
    assert "tok-unregistered-4242" not in message
    assert "4242424242424242" not in message


def test_configuration_errors_never_quote_a_secret_value(tmp_path):
    config = {
        "api_url": "https://api.example",
        "access_key": ["ak-list-secret-7777"],
        "org_id": "o",
        "access_token": 98765432109876,
        "custom_headers": [{"name": "X-Key", "value": "hv-secret-5555\r\nX-Evil: 1"}],
    }
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))

    process = subprocess.run(
        [str(Path(sys.executable).parent / "target-cbx1"), "--config", str(config_file)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert process.returncode == 2
    assert "custom_headers.0.value: holds a line break" in process.stderr
    assert_absent(process.stderr + process.stdout, "ak-list-secret-7777", "98765432109876", "hv-secret-5555")


def test_a_password_in_api_url_is_never_printed(tmp_path):
    config = {
        "api_url": "https://bob:pw-secret-31337@127.0.0.1:9",
        "access_key": ACCESS_KEY,
        "org_id": ORG_ID,
    }
    config |= {"max_retries": 0, "backoff_base_seconds": 0}

    result = run_command(
        config, tmp_path, lines_of([schema("accounts"), account(1)]), env={"LOGLEVEL": "DEBUG"}
    )

    assert_absent(result.stdout + result.stderr, "pw-secret-31337", ACCESS_KEY)


def test_no_secret_in_any_form_in_any_output_of_every_error_path_at_debug(sandbox, tmp_path):
    for fault in ("401", "503", "drop", "body=html", "reject=company2.com", "answer=@upsert-false", "429=0"):
        sandbox.add_fault(fault)
    files = {name: tmp_path / f"{name}.json" for name in ("incremental", "results")}
    config = sandbox_config(
        sandbox,
        incremental_state_path=str(files["incremental"]),
        results_path=str(files["results"]),
        custom_headers=[{"name": "X-Api-Key", "value": HEADER_SECRET}],
    )
    debug = {"LOGLEVEL": "DEBUG"}

    runs = [
        run_command(
            config, tmp_path, lines_of([schema("accounts"), *(account(n) for n in range(8))]), env=debug
        ),
        run_command(
            {**config, "process_as_batch": False},
            tmp_path,
            lines_of([schema("accounts"), account(9)]),
            env=debug,
        ),
        run_command(
            {**config, "access_key": "ak-wrong-1234567"},
            tmp_path,
            lines_of([schema("accounts"), account(1)]),
            env=debug,
        ),
    ]

    assert "target-cbx1.transport" in runs[0].stderr  # the scan covers debug output, the transport's included
    written = "".join(path.read_text() for path in files.values() if path.exists())
    for result in runs:
        output = result.stdout + result.stderr + written
        assert_absent(output, ACCESS_KEY, HEADER_SECRET, "ak-wrong-1234567", *sandbox.tokens)


# Secrets never travel elsewhere


def test_the_token_request_never_follows_a_redirect(api):
    api.get(TOKEN_URL, status_code=302, headers={"Location": "https://evil.example/steal?x=1"})
    evil = api.get("https://evil.example/steal", json=fixture_json("auth_token.json"))
    api.post(BULK, json=bulk_answer())

    with pytest.raises(RedirectedError, match=r"a redirect to https://evil\.example/steal: the target never"):
        TargetCBX1(config=make_config()).listen(stdin_of([schema("accounts"), account(1)]))

    assert not evil.called
    assert [r.url.split("?")[0] for r in api.request_history] == [TOKEN_URL]


# Transport


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
    ]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_sandbox(certificate) -> Sandbox:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    with server:
        yield server


def test_a_certificate_that_fails_verification_stops_the_run_at_once(tls_sandbox, tmp_path):
    url = tls_sandbox.url.replace("http://", "https://")
    started = time.monotonic()

    result = run_command(
        {**sandbox_config(tls_sandbox), "api_url": url}, tmp_path, lines_of([schema("accounts"), account(1)])
    )

    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert "The TLS certificate of 127.0.0.1" in result.stderr
    assert "could not be verified" in result.stderr
    assert "ca_bundle" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_private_ca_is_trusted_with_ca_bundle(tls_sandbox, certificate, tmp_path):
    url = tls_sandbox.url.replace("http://", "https://")
    config = {**sandbox_config(tls_sandbox), "api_url": url, "ca_bundle": str(certificate[0])}

    result = run_command(config, tmp_path, lines_of([schema("accounts"), account(1)]))

    assert result.returncode == 0, result.stderr
    assert result.entries("accounts")[0]["success"] is True


@pytest.mark.parametrize(
    "header",
    [
        {"name": "X-A", "value": "v\r\nX-Evil: 1"},
        {"name": "X-A\nB", "value": "v"},
        {"name": "X A", "value": "v"},
    ],
)
def test_custom_headers_with_control_characters_are_refused_before_any_request(sandbox, tmp_path, header):
    result = run_command(
        sandbox_config(sandbox, custom_headers=[header]), tmp_path, lines_of([schema("accounts"), account(1)])
    )

    assert result.returncode == 2
    assert "custom_headers.0." in result.stderr
    assert sandbox.tokens == {}
    assert sandbox.exchanges == []


# Paths


@pytest.mark.parametrize(
    "stream", ["..", "a/b", "accounts/../contacts", "x?y", "x#y", "%2e%2e", "a\\b", "a.b"]
)
def test_a_stream_name_that_could_change_the_path_is_never_put_in_a_url(api, capsys, stream):
    properties = {"domain": {"type": "string"}}
    messages = [schema(stream, properties), record(stream, domain="acme.com")]

    state = run_target(make_config(), messages, capsys).state

    (entry,) = state["bookmarks"][stream]
    assert entry["success"] is False
    assert f"stream {stream!r} cannot name a CBX1 endpoint" in entry["error"]
    assert "stream map" in entry["error"]
    assert [r for r in api.request_history if r.method == "POST"] == []


# Files


def test_the_token_write_back_keeps_a_symlinked_config_and_its_permissions(sandbox, tmp_path):
    real = tmp_path / "real-config.json"
    real.write_text(json.dumps({"api_url": sandbox.url, "Code": ACCESS_KEY, "OrgId": ORG_ID}))
    real.chmod(0o640)
    link = tmp_path / "config.json"
    link.symlink_to(real)

    process = subprocess.run(
        [str(Path(sys.executable).parent / "target-cbx1"), "--config", str(link)],
        input=lines_of([schema("accounts"), account(1)]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert process.returncode == 0, process.stderr
    assert link.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert json.loads(real.read_text())["AccessToken"] in sandbox.tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "real-config.json"]


def test_new_state_files_are_readable_by_their_owner_only(sandbox, tmp_path):
    files = [tmp_path / "incremental.json", tmp_path / "results.json"]
    config = sandbox_config(sandbox, incremental_state_path=str(files[0]), results_path=str(files[1]))

    result = run_command(config, tmp_path, lines_of([schema("accounts"), account(1)]))

    assert result.returncode == 0, result.stderr
    assert [stat.S_IMODE(path.stat().st_mode) for path in files] == [0o600, 0o600]
