"""The real `target-cbx1` command against the sandbox, as HotGlue runs it: stdin in, state line out."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

from target_cbx1.sandbox import Sandbox
from target_cbx1.settings import CONFIG_SCHEMA
from tests.conftest import ACCESS_KEY, ORG_ID, lines_of, sandbox_config

COMMAND = str(Path(sys.executable).parent / "target-cbx1")
SAMPLE = Path(__file__).parent.parent / "examples" / "hubspot_export.singer"
SAMPLE_ACCOUNT_OUTCOMES = [True, True, False, False, True, True, False, True, True]


class Result:
    """A finished run: exit code, the state line it printed, and its log."""

    def __init__(self, process: subprocess.CompletedProcess) -> None:
        self.returncode = process.returncode
        self.stdout = process.stdout
        self.stderr = process.stderr

    @property
    def state(self) -> dict:
        return json.loads(self.stdout.splitlines()[-1])

    def entries(self, stream: str) -> list[dict]:
        return self.state["bookmarks"][stream]


def run_command(
    config: dict | None, tmp_path: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> Result:
    args = [COMMAND]
    if config is not None:
        config_file = tmp_path / "config.json"
        config_file.write_text(json.dumps(config))
        args += ["--config", str(config_file)]
    text = SAMPLE.read_text() if stdin is None else stdin
    process = subprocess.run(
        args, input=text, capture_output=True, text=True, timeout=60, check=False, env=env_with(env)
    )
    return Result(process)


def start_command(config: dict, tmp_path: Path, stdin: str) -> subprocess.Popen:
    """Start the command with its input written but left open, as a job still being fed."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    process = subprocess.Popen(
        [COMMAND, "--config", str(config_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_with(None),
    )
    assert process.stdin is not None
    process.stdin.write(stdin)
    process.stdin.flush()
    return process


def wait_until(condition: t.Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def env_with(extra: dict[str, str] | None) -> dict[str, str]:
    """This process's environment without HotGlue's variables, plus `extra`."""
    hotglue = ("JOB_ID", "JOB_ROOT", "BASE_URL", "OUTPUT_MAPPED_RECORD", "CONNECTOR_ID")
    return {**{k: v for k, v in os.environ.items() if k not in hotglue}, **(extra or {})}


def assert_matches_sandbox(entries: list[dict], sandbox: Sandbox, stream: str) -> None:
    """Every success is the id the sandbox holds for its key; every failure names its reason."""
    stored = sandbox.records(stream)
    for entry in entries:
        if entry["success"]:
            assert entry["id"] == stored[entry["lookupKey"]].id, entry
        else:
            assert entry["id"] is None, entry
            assert entry["error"], entry
    assert set(stored) == {entry["lookupKey"] for entry in entries if entry["success"]}


def assert_no_secrets(result: Result, sandbox: Sandbox) -> None:
    output = result.stdout + result.stderr
    assert ACCESS_KEY not in output
    assert not [token for token in sandbox.tokens if token in output]


def test_sample_export_is_accounted_for_record_by_record(sandbox, tmp_path):
    result = run_command({"api_url": sandbox.url, "Code": ACCESS_KEY, "OrgId": ORG_ID}, tmp_path)

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    accounts, contacts = result.entries("accounts"), result.entries("contacts")
    assert [e["externalId"] for e in accounts] == [f"500{n}" for n in (1, 2, 3, 4, 5, 2, 6, 7, 8)]
    assert [e["success"] for e in accounts] == SAMPLE_ACCOUNT_OUTCOMES
    assert accounts[2]["error"].startswith("domain is required")
    assert "invalid domain 'not a domain'" in accounts[3]["error"]
    assert accounts[6]["lookupKey"] == "umbrella_corp.com"
    assert accounts[6]["error"] == "CBX1 rejected the record: Invalid domain"  # the sandbox's message
    assert [e["success"] for e in contacts] == [True, True, False, False, True, True, True, True]
    assert contacts[2]["error"].startswith("email is required")
    assert "invalid email 'dana@initech'" in contacts[3]["error"]
    assert contacts[0]["id"] == contacts[4]["id"]  # the same person, upserted twice
    assert sandbox.records("contacts")["ann.lee@acme.com"].record["title"] == "CEO"  # the later version
    assert_matches_sandbox(accounts, sandbox, "accounts")
    assert_matches_sandbox(contacts, sandbox, "contacts")
    assert result.state["summary"] == {
        "accounts": {"success": 5, "fail": 3, "existing": 1, "updated": 0},
        "contacts": {"success": 6, "fail": 2, "existing": 0, "updated": 0},
    }
    assert_no_secrets(result, sandbox)


def test_record_mode_sends_one_upsert_per_record(sandbox, tmp_path):
    result = run_command(sandbox_config(sandbox, process_as_batch=False), tmp_path)

    assert result.returncode == 0, result.stderr
    assert {exchange.endpoint for exchange in sandbox.exchanges} == {"upsert"}
    assert len(sandbox.exchanges) == 12  # every record with a valid key, the identical duplicate sent once
    umbrella = result.entries("accounts")[6]
    assert not umbrella["success"]
    assert umbrella["error"] == "CBX1 rejected the request (HTTP 400: Invalid domain)"
    assert_matches_sandbox(result.entries("accounts"), sandbox, "accounts")
    assert_matches_sandbox(result.entries("contacts"), sandbox, "contacts")


def test_many_records_in_chunks_keep_one_id_per_key(sandbox, tmp_path):
    schema = {"type": "SCHEMA", "stream": "contacts", "schema": {"properties": {}}, "key_properties": []}
    records = [
        {"type": "RECORD", "stream": "contacts", "record": {"email": f"p{n % 150}@example.com", "n": n}}
        for n in range(400)
    ]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([schema, *records]))

    assert result.returncode == 0, result.stderr
    entries = result.entries("contacts")
    assert len(entries) == 400
    assert all(entry["success"] for entry in entries)
    assert_matches_sandbox(entries, sandbox, "contacts")
    assert len(sandbox.records("contacts")) == 150
    assert sandbox.records("contacts")["p0@example.com"].record["n"] == 300  # the last write wins
    assert all(len(exchange.lookup_keys) <= 20 for exchange in sandbox.exchanges)
    assert all(len(set(e.lookup_keys)) == len(e.lookup_keys) for e in sandbox.exchanges)


def test_transient_faults_are_retried_until_the_records_land(sandbox, tmp_path):
    for fault in ("503", "429=0", "drop"):
        sandbox.add_fault(fault)

    result = run_command(sandbox_config(sandbox), tmp_path)

    assert result.returncode == 0, result.stderr
    assert [exchange.fault for exchange in sandbox.exchanges[:3]] == ["503", "429", "drop"]
    assert [e["success"] for e in result.entries("accounts")] == SAMPLE_ACCOUNT_OUTCOMES
    assert_matches_sandbox(result.entries("accounts"), sandbox, "accounts")
    assert_matches_sandbox(result.entries("contacts"), sandbox, "contacts")


def test_revoked_token_is_refreshed_once_and_the_request_repeated(sandbox, tmp_path):
    sandbox.add_fault("401")

    result = run_command(sandbox_config(sandbox), tmp_path)

    assert result.returncode == 0, result.stderr
    assert len(sandbox.tokens) == 2
    assert [e.status for e in sandbox.exchanges].count(401) == 1  # requests race: not always the first logged
    assert_matches_sandbox(result.entries("accounts"), sandbox, "accounts")
    assert_no_secrets(result, sandbox)


def test_a_missing_result_is_a_failure_never_a_silent_success(sandbox, tmp_path):
    sandbox.add_fault("omit*always")  # every answer, that of each record sent once more included

    result = run_command(sandbox_config(sandbox, process_as_batch=True), tmp_path)

    assert result.returncode == 0, result.stderr
    assert "sending them once more" in result.stderr
    failed = [e for e in result.entries("accounts") + result.entries("contacts") if not e["success"]]
    missing = [e for e in failed if e["error"].startswith("no result returned for lookupKey")]
    assert missing
    assert all(entry["lookupKey"] in entry["error"] and entry["id"] is None for entry in missing)
    stored = sandbox.records("accounts")
    assert all(e["id"] == stored[e["lookupKey"]].id for e in result.entries("accounts") if e["success"])


def test_refreshed_token_is_written_back_to_the_config_file(sandbox, tmp_path):
    run_command({"api_url": sandbox.url, "Code": ACCESS_KEY, "OrgId": ORG_ID}, tmp_path)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["AccessToken"] in sandbox.tokens
    assert saved["expires_in"] > time.time()


def test_wrong_credentials_end_the_run_with_a_clear_message_and_no_secret(sandbox, tmp_path):
    wrong_key = "ak-wrong-0000000000"
    result = run_command({"api_url": sandbox.url, "access_key": wrong_key, "org_id": ORG_ID}, tmp_path)

    assert result.returncode != 0
    assert "CBX1 authentication failed" in result.stderr
    assert "Invalid access key or organisation" in result.stderr
    assert wrong_key not in result.stderr + result.stdout
    assert all(not entry["success"] for entries in result.state["bookmarks"].values() for entry in entries)
    assert sandbox.exchanges == []


def test_plain_http_to_a_remote_host_is_refused_before_any_request(tmp_path):
    config = {"api_url": "http://api.cbx1.example.com", "access_key": ACCESS_KEY, "org_id": ORG_ID}

    result = run_command(config, tmp_path)

    assert result.returncode != 0
    assert "https://" in result.stderr
    assert ACCESS_KEY not in result.stderr


def test_about_lists_every_setting():
    result = subprocess.run(
        [COMMAND, "--about", "--format", "json"], capture_output=True, text=True, check=True
    )

    settings = json.loads(result.stdout)["settings"]["properties"]
    assert set(CONFIG_SCHEMA["properties"]) <= set(settings)
    for name in CONFIG_SCHEMA["properties"]:
        assert settings[name].get("description"), name
    assert settings["access_key"]["secret"] is True
    assert settings["batch_size"]["default"] == 20


def test_demo_shows_every_record_outcome_of_every_job(tmp_path):
    demo = Path(__file__).parent.parent / "examples" / "demo.py"
    output, workdir = tmp_path / "output", tmp_path / "work"
    workdir.mkdir()

    result = subprocess.run(
        [sys.executable, str(demo), str(output)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    # Its configs (access key, and the session token the target writes back) stay in its output.
    assert list(workdir.iterdir()) == []
    out = result.stdout
    assert "accounts: 9 records read: 5 succeeded, 3 failed, 1 existing" in out
    assert "contacts: 8 records read: 6 succeeded, 2 failed, 0 existing" in out
    assert "umbrella_corp.com                    FAILED: CBX1 rejected the record: Invalid domain" in out
    assert "5 records sent in 1 request to integrations/HUBSPOT/ACCOUNT/records" in out
    assert "Account: 8 records read: 7 succeeded, 0 failed, 1 existing" in out
    assert "7 records sent in 1 request to integrations/MARKETO/CONTACT/records" in out
    jobs = ["hubspot-flat", "hubspot-envelopes", "salesforce-envelopes", "marketo-envelopes"]
    for job in jobs:
        state = json.loads((output / job / "state.json").read_text())
        for entries in state["bookmarks"].values():
            for entry in entries:
                assert (entry["id"] if entry["success"] else entry["error"]) in out


def test_demo_writes_by_default_only_where_git_ignores():
    """`make demo` leaves nothing for `git status` to show: its output, configs included, is ignored."""
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    spec = importlib.util.spec_from_file_location("demo", root / "examples" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    output = demo.DEFAULT_OUTPUT
    assert output.is_relative_to(root)
    for job in demo.RUNS:
        for name in ("config.json", "state.json", "target.log"):
            path = output / job.name / name
            ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(path)], check=False)
            assert ignored.returncode == 0, f"{path.relative_to(root)} is not ignored by git"


CONFIG_PREFIX = "| Invalid target-cbx1 config: "
FIX_FILE = "; fix the file given with --config"


def config_problems(stderr: str) -> list[str]:
    """The text of each ERROR line after the config prefix, which every ERROR line has."""
    errors = [line for line in stderr.splitlines() if "| ERROR" in line]
    assert all(CONFIG_PREFIX in line for line in errors), stderr
    return [line.split(CONFIG_PREFIX, 1)[1] for line in errors]


@pytest.mark.parametrize(
    ("content", "problems"),
    [
        (None, ["config file {path} does not exist" + FIX_FILE]),
        ("not json", ["config file {path} is not valid JSON (Expecting value at line 1)" + FIX_FILE]),
        ("[1, 2]", ["config file {path} holds a JSON list, not an object" + FIX_FILE]),
        (
            "{}",
            [
                "api_url is required (or set the BASE_URL environment variable)",
                "access_key is required (HotGlue: Code)",
                "org_id is required (HotGlue: OrgId)",
                "3 problems, each on its own line above; fix them all, then rerun",
            ],
        ),
        (
            '{"api_url": "https://a.example", "access_key": "k", "org_id": "o", "max_retries": "x"}',
            ["max_retries: Input should be a valid integer, unable to parse string as an integer"],
        ),
        (
            '{"api_url": "https://a.example", "access_key": "k-123456", "org_id": "o", "api": "nope", '
            '"max_concurrency": 100000, "timeout": 1e308, "stream_maps": 5}',
            [
                "stream_maps: must be object or null",
                "api: Input should be 'auto', 'bulk' or 'records'",
                "timeout: Input should be less than or equal to 3600",
                "max_concurrency: Input should be less than or equal to 64",
                "4 problems, each on its own line above; fix them all, then rerun",
            ],
        ),
        (  # the SDK's own check, when it sets up flattening
            '{"api_url": "https://a.example", "access_key": "k-123456", "org_id": "o", '
            '"flattening_enabled": true}',
            ["flattening_max_depth is required when flattening is enabled"],
        ),
    ],
)
def test_a_bad_config_stops_with_an_error_line_per_problem_and_exit_2(tmp_path, content, problems):
    config_file = tmp_path / "config.json"
    if content is not None:
        config_file.write_text(content)

    process = subprocess.run(
        [COMMAND, "--config", str(config_file)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert process.stdout == ""
    assert config_problems(process.stderr) == [problem.format(path=config_file) for problem in problems]


def run_with_environment(sandbox: Sandbox, **variables: str) -> subprocess.CompletedProcess:
    """The sample export through `--config ENV`, the sandbox's credentials and `variables` set."""
    env = {
        "TARGET_CBX1_API_URL": sandbox.url,
        "TARGET_CBX1_ACCESS_KEY": ACCESS_KEY,
        "TARGET_CBX1_ORG_ID": ORG_ID,
    }
    env |= {f"TARGET_CBX1_{name.upper()}": value for name, value in variables.items()}
    return subprocess.run(
        [COMMAND, "--config", "ENV"],
        input=SAMPLE.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env_with(env),
    )


def test_config_from_the_environment_takes_a_text_org_id(sandbox, tmp_path):
    process = run_with_environment(sandbox, batch_size="2", lookup_fields='{"people": "email"}')

    assert process.returncode == 0, process.stderr
    assert all(len(exchange.lookup_keys) <= 2 for exchange in sandbox.exchanges)
    assert json.loads(process.stdout.splitlines()[-1])["summary"]["accounts"]["success"] == 5


def test_a_bad_environment_setting_is_named(tmp_path):
    env = {"TARGET_CBX1_API_URL": "https://a.example", "TARGET_CBX1_ACCESS_KEY": "k-123456"}
    env |= {"TARGET_CBX1_ORG_ID": "o", "TARGET_CBX1_BATCH_SIZE": "many", "TARGET_CBX1_OBJECT_TYPES": "{bad"}
    process = subprocess.run(
        [COMMAND, "--config", "ENV"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env_with(env),
    )

    assert process.returncode == 2
    problems = config_problems(process.stderr)
    assert problems[0].startswith("TARGET_CBX1_OBJECT_TYPES is not valid JSON")
    assert problems[1].startswith("batch_size: Input should be a valid integer")
    assert problems[2].startswith("2 problems")


@pytest.mark.parametrize(
    ("setting", "path"),
    [("results_path", "/dev/full"), ("incremental_state_path", "/proc/no-such-dir/state.json")],
)
def test_a_state_file_that_cannot_be_written_stops_at_once(sandbox, tmp_path, setting, path):
    started = time.monotonic()

    result = run_command(sandbox_config(sandbox, **{setting: path}), tmp_path)

    assert time.monotonic() - started < 10
    assert result.returncode == 2
    (problem,) = config_problems(result.stderr)
    assert problem.startswith(f"{setting}: {path} cannot be written (")
    assert problem.endswith("); fix the path or its permissions")
    assert "Traceback" not in result.stderr
    assert sandbox.exchanges == []


def test_the_start_check_of_a_state_file_leaves_nothing_behind(sandbox, tmp_path):
    folder = tmp_path / "state"

    result = run_command(sandbox_config(sandbox, results_path=str(folder / "results.json")), tmp_path)

    assert result.returncode == 0, result.stderr
    assert [p.name for p in folder.iterdir()] == ["results.json"]


def test_sdk_settings_come_from_the_environment_too(sandbox, tmp_path):
    process = run_with_environment(sandbox, stream_maps='{"contacts": null}')

    assert process.returncode == 0, process.stderr
    state = json.loads(process.stdout.splitlines()[-1])
    assert state["bookmarks"].get("contacts", []) == []  # the stream map dropped them
    assert sandbox.records("contacts") == {}
    assert sandbox.records("accounts")


def test_a_bad_stream_map_is_a_config_error_without_a_traceback(tmp_path):
    config = {"api_url": "https://a.example", "access_key": "k-123456", "org_id": "o"}
    config["stream_maps"] = {"contacts": {"__else__": "bogus"}}
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    lines = lines_of(
        [{"type": "SCHEMA", "stream": "contacts", "schema": {"properties": {}}, "key_properties": []}]
    )

    process = subprocess.run(
        [COMMAND, "--config", str(config_file)],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert process.returncode in (1, 2)
    assert "Traceback" not in process.stderr
