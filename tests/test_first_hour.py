"""Errors a person can act on: the real command, one ERROR line with the fix (one for each config
problem), a non-zero exit, quickly.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from target_cbx1.errors import ApiUrlError
from target_cbx1.sandbox import Sandbox
from target_cbx1.target import TargetCBX1
from tests.conftest import (
    ACCESS_KEY,
    ORG_ID,
    TOKEN_URL,
    account,
    lines_of,
    make_config,
    sandbox_config,
    schema,
    stdin_of,
)
from tests.test_end_to_end import COMMAND, Result, config_problems, env_with, run_command

INPUT = lines_of([schema("accounts"), account(1), schema("contacts")])


def one_error(result: Result) -> str:
    """The run's only ERROR line; there is no traceback and no library warning."""
    assert "Traceback" not in result.stderr
    assert "urllib3" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert ACCESS_KEY not in result.stderr + result.stdout
    return errors[0]


def test_an_unknown_setting_is_named_with_the_setting_it_may_mean(sandbox, tmp_path):
    result = run_command(sandbox_config(sandbox, max_retry=3, acme=1), tmp_path, INPUT)

    assert result.returncode == 0, result.stderr
    assert "Unknown settings, ignored: 'acme', 'max_retry' (did you mean 'max_retries'?)" in result.stderr


def test_a_mistyped_required_setting_gets_its_suggestion_beside_the_error(tmp_path):
    config = {"api_url": "https://a.example", "acces_key": "k-1", "org_id": "o"}

    result = run_command(config, tmp_path, INPUT)

    assert result.returncode == 2
    assert "access_key is required" in one_error(result)
    assert "'acces_key' (did you mean 'access_key'?)" in result.stderr


def test_every_config_problem_is_its_own_error_line_and_the_last_counts_them(tmp_path):
    config = {"api_url": "http://example.com", "max_concurrency": 100000, "acess_key": ACCESS_KEY}

    result = run_command(config, tmp_path, INPUT)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # no state line
    assert ACCESS_KEY not in result.stderr
    assert config_problems(result.stderr) == [
        "api_url: http://example.com uses plain http://; use https:// (http is accepted only for 127.0.0.1 / "
        "localhost)",
        "access_key is required (HotGlue: Code)",
        "org_id is required (HotGlue: OrgId)",
        "max_concurrency: Input should be less than or equal to 64",
        "4 problems, each on its own line above; fix them all, then rerun",
    ]


@pytest.mark.parametrize(
    ("api_url", "hint"),
    [
        ("http://127.0.0.1:1", "Cannot reach the CBX1 API: 127.0.0.1:1 refused the connection in 3 attempts"),
        ("https://no-such-host.invalid", "the host name no-such-host.invalid does not resolve (DNS)"),
    ],
)
def test_a_host_that_cannot_be_reached_stops_the_run_with_one_line(tmp_path, api_url, hint):
    started = time.monotonic()

    result = run_command(make_config(api_url=api_url, max_retries=2), tmp_path, INPUT)

    assert time.monotonic() - started < 20
    assert result.returncode == 1
    line = one_error(result)
    assert hint in line
    assert "Check api_url" in line
    assert "proxy" in line
    assert "WARNING" not in result.stderr


def test_a_tls_failure_names_the_host_and_ca_bundle(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    with server:
        url = server.url.replace("http://", "https://")
        result = run_command(make_config(api_url=url), tmp_path, INPUT)

    assert result.returncode == 1
    line = one_error(result)
    assert "The TLS certificate of 127.0.0.1" in line
    assert "ca_bundle" in line


def test_an_api_url_with_a_path_is_blamed_on_the_url_not_the_credentials(sandbox, tmp_path):
    result = run_command(sandbox_config(sandbox, api_url=sandbox.url + "/api/t/v1"), tmp_path, INPUT)

    assert result.returncode == 1
    line = one_error(result)
    assert "CBX1 has no token endpoint at" in line
    assert "Check api_url: it must be the API's base URL, such as https://api.cbx1.com" in line
    assert "access_key" not in line


def test_a_wrong_access_key_names_access_key_and_org_id(sandbox, tmp_path):
    result = run_command(sandbox_config(sandbox, access_key="wrong-key-1"), tmp_path, INPUT)

    assert result.returncode == 1
    line = one_error(result)
    assert "Check access_key (HotGlue: Code) and org_id" in line
    assert "wrong-key-1" not in result.stderr


def test_a_token_endpoint_answering_405_is_an_api_url_error(api):
    api.get(TOKEN_URL, status_code=405, json={"message": "Method not allowed"})

    with pytest.raises(ApiUrlError, match="Check api_url"):
        TargetCBX1(config=make_config()).listen(stdin_of([schema("accounts"), account(1)]))


def test_the_exit_codes_are_documented():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130, 138, 143 |"):
        assert code in section


def run_check(config: dict, tmp_path: Path) -> Result:
    """`target-cbx1 --config FILE --check`, with stdin left open: the check must not read it."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    with subprocess.Popen(
        [COMMAND, "--config", str(config_file), "--check"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_with(None),
    ) as process:
        stdout, stderr = process.communicate(timeout=60)
    return Result(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))


def test_check_with_good_credentials_names_the_organisation_and_sends_nothing(sandbox, tmp_path):
    result = run_check(sandbox_config(sandbox), tmp_path)

    assert result.returncode == 0, result.stderr
    assert f"Check passed: {sandbox.url}/ issued a session token for org_id {ORG_ID!r}" in result.stderr
    assert "ERROR" not in result.stderr
    assert sandbox.exchanges == []
    assert "access_token" not in json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize(
    ("overrides", "hint"),
    [
        ({"access_key": "wrong-key-1"}, "Check access_key (HotGlue: Code) and org_id"),
        ({"api_url": "http://127.0.0.1:1"}, "127.0.0.1:1 refused the connection, so nothing was sent"),
    ],
)
def test_check_with_a_problem_gives_one_line_and_exit_1(sandbox, tmp_path, overrides, hint):
    result = run_check(sandbox_config(sandbox, **overrides), tmp_path)

    assert result.returncode == 1
    assert hint in one_error(result)


def test_check_with_a_bad_config_lists_every_problem_and_exits_2(tmp_path):
    result = run_check({"api_url": "https://a.example", "Code": ACCESS_KEY, "timeout": 0}, tmp_path)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert ACCESS_KEY not in result.stderr
    assert config_problems(result.stderr) == [
        "org_id is required (HotGlue: OrgId)",
        "timeout: Input should be greater than 0",
        "2 problems, each on its own line above; fix them all, then rerun",
    ]
