"""End-to-end: `meltano add --plugin-type loader target-cbx1 --custom` keeps the tap's bookmark.

What a user does from the README's "In a Meltano project", in a throwaway project under pytest's
tmp_path: `meltano init`, then `meltano add --plugin-type loader target-cbx1 --custom` with the
prompts answered on stdin (pip_url: this repository's directory, so Meltano builds and installs the
working tree into its own venv for the loader), then `meltano config set target-cbx1 ...` for a
CBX1 sandbox running in this process. The tap is a stdlib-only script written into the project and
added with `meltano add --plugin-type extractor tap-accounts --custom` (pip_url `n`: nothing to
install, the executable is the script's absolute path). It emits SCHEMA, RECORD and STATE messages
for the accounts in a JSON file that sort after its bookmark, and logs what `--state` it got.

The definition from the prompts declares three settings and no `state_output`, so the target picks
singer state mode because Meltano's `MELTANO_*` variables are set: it prints the tap's STATE
messages, never its HotGlue state line. `meltano run` twice: Meltano must store exactly the tap's
last STATE as the bookmark and hand it back, so the second run reads only the changed accounts. Had
the target printed its HotGlue line (`{"bookmarks": {"accounts": [outcomes]}, "summary": ...}`),
Meltano would store that instead, and the bookmark assertions fail.

Needs Meltano 4.4 or a later 4.x: $MELTANO_EXAMPLE_BIN, else /tmp/meltano-venv/bin/meltano (which
`make meltano-example` creates); skipped without one. The plugin install needs the package index (or
uv's cache) for the target's dependencies. Takes about 20 seconds; `-k custom_install` selects these
tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml

from target_cbx1.sandbox.server import DEFAULT_ACCESS_KEY, DEFAULT_ORG_ID, Sandbox

REPO = Path(__file__).resolve().parent.parent
MELTANO = Path(os.environ.get("MELTANO_EXAMPLE_BIN") or "/tmp/meltano-venv/bin/meltano")
STATE_ID = "dev:tap-accounts-to-target-cbx1"  # <environment>:<extractor>-to-<loader>
ANNOUNCEMENT = "Running under Meltano: state_output singer"
# Variables that would change what Meltano or the plugins do in the test project.
FOREIGN_PREFIXES = ("MELTANO_", "TAP_ACCOUNTS_", "TARGET_CBX1_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
FOREIGN_NAMES = ("BASE_URL", "JOB_ID", "JOB_ROOT", "OUTPUT_MAPPED_RECORD", "LOGLEVEL", "CONNECTOR_ID")

ADD_LOADER = ("add", "--plugin-type", "loader", "target-cbx1", "--custom")
ADD_TAP = ("add", "--plugin-type", "extractor", "tap-accounts", "--custom")
# The answers to `meltano add --plugin-type loader target-cbx1 --custom`, prompt by prompt, with the
# default each prompt shows. The executable must be given: Meltano derives its default from pip_url's
# last path component, which for a local directory is (part of) the directory's name, so that default
# (None here) depends on where the checkout is.
LOADER_ANSWERS = {
    ("(namespace)", "target_cbx1"): "target_cbx1",
    ("(pip_url)", "target-cbx1"): str(REPO),
    ("(executable)", None): "target-cbx1",
    ("(settings)", "[]"): "api_url,access_key:password,org_id",
}

# The fake tap: accounts from `data_path` sorted by updatedAt, only those after the bookmark, a STATE
# after each record (and one at the end), and a line in `log_path` per run: the state it was given
# and the records and states it emitted.
TAP_SCRIPT = """\
import argparse
import json
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--state")
args, _ = parser.parse_known_args()
config = json.loads(Path(args.config).read_text())
state_in = json.loads(Path(args.state).read_text()) if args.state else None
bookmark = ((state_in or {}).get("bookmarks", {}).get("accounts") or {}).get("replication_key_value")
accounts = sorted(json.loads(Path(config["data_path"]).read_text()), key=lambda row: row["updatedAt"])
properties = {name: {"type": ["string", "null"]} for name in ("crmAssociationId", "name", "domain")}
properties["updatedAt"] = {"type": "string", "format": "date-time"}
records, states = [], []


def emit(message):
    print(json.dumps(message), flush=True)


def emit_state():
    value = {"bookmarks": {"accounts": {"replication_key": "updatedAt", "replication_key_value": bookmark}}}
    states.append(value)
    emit({"type": "STATE", "value": value})


emit({"type": "SCHEMA", "stream": "accounts", "schema": {"type": "object", "properties": properties},
      "key_properties": ["crmAssociationId"], "bookmark_properties": ["updatedAt"]})
for account in accounts:
    if bookmark is None or account["updatedAt"] > bookmark:
        emit({"type": "RECORD", "stream": "accounts", "record": account})
        records.append(account["crmAssociationId"])
        bookmark = account["updatedAt"]
        emit_state()
emit_state()
with Path(config["log_path"]).open("a") as log:
    log.write(json.dumps({"state_in": state_in, "records": records, "states": states}) + "\\n")
"""


def account(number: int, name: str, domain: str, updated: str) -> dict[str, str]:
    return {"crmAssociationId": f"A-{number}", "name": name, "domain": domain, "updatedAt": updated}


FIRST_EXPORT = [
    account(1, "Acme Corp", "acme.com", "2025-01-01T10:00:00Z"),
    account(3, "Initech", "initech.com", "2025-01-03T10:00:00Z"),
    account(2, "Globex", "globex.io", "2025-01-02T10:00:00Z"),
]
# Before the second run: Globex renamed, and a new account.
SECOND_EXPORT = [
    *FIRST_EXPORT[:2],
    account(2, "Globex Corporation", "globex.io", "2025-02-01T10:00:00Z"),
    account(4, "Umbrella", "umbrella.com", "2025-02-02T10:00:00Z"),
]


def bookmark(value: str) -> dict[str, t.Any]:
    return {"bookmarks": {"accounts": {"replication_key": "updatedAt", "replication_key_value": value}}}


def meltano_version() -> tuple[int, ...] | None:
    if not os.access(MELTANO, os.X_OK):
        return None
    done = subprocess.run(
        [str(MELTANO), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    found = re.search(r"version (\d+)\.(\d+)", done.stdout)
    return (int(found[1]), int(found[2])) if found else None


def foreign(name: str) -> bool:
    return name.startswith(FOREIGN_PREFIXES) or name in FOREIGN_NAMES


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-8000:]}"


class Project:
    """A throwaway Meltano project; each command runs with a clean environment and must succeed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tap = root / "extract" / "tap_accounts.py"
        self.data = root / "extract" / "accounts.json"
        self.tap_log = root / "extract" / "tap-runs.jsonl"
        self.added_loader: subprocess.CompletedProcess[str] | None = None  # what `meltano add` printed
        self.env = {
            **{name: value for name, value in os.environ.items() if not foreign(name)},
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
            "DO_NOT_TRACK": "1",
            "NO_COLOR": "1",
            # The tap's two declared settings; Meltano maps TAP_ACCOUNTS_* to them.
            "TAP_ACCOUNTS_DATA_PATH": str(self.data),
            "TAP_ACCOUNTS_LOG_PATH": str(self.tap_log),
        }

    def __call__(
        self, *args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(MELTANO), *args],
            cwd=cwd or self.root,
            env=self.env,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, (
            f"`meltano {' '.join(args)}` exited with {done.returncode}:\n{output(done)}"
        )
        return done

    def plugin(self, kind: str, name: str) -> dict[str, t.Any]:
        project = yaml.safe_load((self.root / "meltano.yml").read_text())
        return next(p for p in project["plugins"][kind] if p["name"] == name)

    def state(self) -> dict[str, t.Any]:
        return json.loads(self("state", "get", STATE_ID).stdout)

    def tap_runs(self) -> list[dict[str, t.Any]]:
        return [json.loads(line) for line in self.tap_log.read_text().splitlines()]


@pytest.fixture(scope="module")
def cbx1() -> t.Iterator[Sandbox]:
    with Sandbox(access_key=DEFAULT_ACCESS_KEY, org_id=DEFAULT_ORG_ID) as server:
        yield server


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, cbx1: Sandbox) -> Project:
    version = meltano_version()
    if version is None:
        pytest.skip(f"no Meltano at {MELTANO}: run `make meltano-example` once (or set MELTANO_EXAMPLE_BIN)")
    if not (4, 4) <= version < (5, 0):
        pytest.skip(f"Meltano at {MELTANO} is {version}; the prompts answered here are Meltano 4.4's")
    parent = tmp_path_factory.mktemp("meltano-custom-install")
    project = Project(parent / "project")
    project("init", project.root.name, "--no_usage_stats", cwd=parent)

    loader_answers = "".join(answer + "\n" for answer in LOADER_ANSWERS.values())
    project.added_loader = project(*ADD_LOADER, stdin=loader_answers, timeout=900)

    project.tap.write_text(f"#!{sys.executable}\n{TAP_SCRIPT}")
    project.tap.chmod(0o755)
    # namespace: the default (tap_accounts); pip_url: n (nothing to install); executable: the
    # script's path; capabilities: state (Meltano passes --state); settings.
    tap_answers = ["", "n", str(project.tap), "state", "data_path,log_path"]
    project(*ADD_TAP, stdin="".join(answer + "\n" for answer in tap_answers))

    settings = {"api_url": cbx1.url, "access_key": DEFAULT_ACCESS_KEY, "org_id": DEFAULT_ORG_ID}
    for name, value in settings.items():  # as the README says; access_key goes to .env
        project("config", "set", "target-cbx1", name, value)
    return project


def test_meltano_add_custom_asks_for_the_definition_and_installs_the_loader_from_the_repository(project):
    assert project.added_loader is not None
    asked = project.added_loader.stdout
    for name, default in LOADER_ANSWERS:
        shown = re.escape(default) if default is not None else r"[^\]]*"
        prompt = re.escape(name) + r" \[" + shown + r"\]:"
        assert re.search(prompt, asked), f"Meltano did not ask {name}:\n{output(project.added_loader)}"
    assert "(capabilities)" not in asked  # a loader is not asked for them

    loader = project.plugin("loaders", "target-cbx1")
    assert loader["namespace"] == "target_cbx1"
    assert loader["pip_url"] == str(REPO)
    assert loader["executable"] == "target-cbx1"
    assert [s["name"] for s in loader["settings"]] == ["api_url", "access_key", "org_id"]
    assert next(s for s in loader["settings"] if s["name"] == "access_key").get("sensitive") is True
    assert "state_output" not in loader.get("config", {})  # singer mode comes from running under Meltano

    # `meltano add` installed it, built from the working tree into the loader's own venv.
    venv = project.root / ".meltano" / "loaders" / "target-cbx1" / "venv"
    assert os.access(venv / "bin" / "target-cbx1", os.X_OK)
    [direct_url] = venv.glob("lib/python*/site-packages/target_cbx1-*.dist-info/direct_url.json")
    installed_from = json.loads(direct_url.read_text())
    assert installed_from["url"] == REPO.as_uri()
    assert not installed_from.get("dir_info", {}).get("editable")  # a build, as from a git URL

    # The access key went to .env (sensitive), not meltano.yml.
    assert f"TARGET_CBX1_ACCESS_KEY='{DEFAULT_ACCESS_KEY}'" in (project.root / ".env").read_text()
    assert DEFAULT_ACCESS_KEY not in (project.root / "meltano.yml").read_text()


def test_meltano_run_stores_the_taps_bookmark_and_hands_it_back(project, cbx1):
    project.data.write_text(json.dumps(FIRST_EXPORT))

    first = project("run", "tap-accounts", "target-cbx1")

    [run] = project.tap_runs()
    assert run["state_in"] is None  # no bookmark yet: a full read
    assert run["records"] == ["A-1", "A-2", "A-3"]
    stored = cbx1.records("accounts")
    assert {domain: r.record["name"] for domain, r in stored.items()} == {
        "acme.com": "Acme Corp",
        "globex.io": "Globex",
        "initech.com": "Initech",
    }, output(first)
    state = project.state()
    assert state == {"singer_state": run["states"][-1]}, output(first)  # the tap's last STATE, as it was
    assert state["singer_state"] == bookmark("2025-01-03T10:00:00Z")
    assert "summary" not in state["singer_state"]  # not the HotGlue state line
    assert isinstance(state["singer_state"]["bookmarks"]["accounts"], dict)  # HotGlue's holds a list
    log = first.stdout + first.stderr
    assert log.count(ANNOUNCEMENT) == 1, output(first)

    project.data.write_text(json.dumps(SECOND_EXPORT))

    second = project("run", "tap-accounts", "target-cbx1")

    runs = project.tap_runs()
    assert len(runs) == 2
    assert runs[1]["state_in"] == bookmark("2025-01-03T10:00:00Z")  # Meltano handed the bookmark back
    assert runs[1]["records"] == ["A-2", "A-4"]  # only the accounts changed since
    stored = cbx1.records("accounts")
    assert {domain: (r.record["name"], r.writes) for domain, r in stored.items()} == {
        "acme.com": ("Acme Corp", 1),
        "globex.io": ("Globex Corporation", 2),
        "initech.com": ("Initech", 1),
        "umbrella.com": ("Umbrella", 1),
    }, output(second)
    state = project.state()
    assert state == {"singer_state": runs[1]["states"][-1]}, output(second)
    assert state["singer_state"] == bookmark("2025-02-02T10:00:00Z")  # the bookmark advanced
    log = second.stdout + second.stderr
    assert log.count(ANNOUNCEMENT) == 1, output(second)
