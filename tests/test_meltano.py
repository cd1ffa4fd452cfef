"""`meltano run tap-hubspot target-cbx1` with the repository's meltano.yml, against the sandbox.

Meltano 4.4 is installed once into a cache outside the repository (see `meltano_bin`) and reused.
Each test makes a throwaway Meltano project from the repository's meltano.yml, with one change:
tap-hubspot is the local test tap in tests/hubspot_tap (HubSpot-shaped companies and contacts from a
JSON file), not the real HubSpot API. The loader, its stream maps and `state_output: singer` are the
repository's own. Plugin installs use Meltano's default backend (uv) and its download cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from target_cbx1.sandbox import Sandbox
from target_cbx1.settings import Settings
from tests.conftest import ACCESS_KEY, ORG_ID

REPO = Path(__file__).resolve().parent.parent
FAKE_TAP = REPO / "tests" / "hubspot_tap"
MELTANO_SPEC = "meltano==4.4.*"
STATE_ID = "dev:tap-hubspot-to-target-cbx1"
# Environment variables that would change what Meltano or the plugins do in the test project.
FOREIGN_PREFIXES = ("MELTANO_", "TAP_HUBSPOT_", "TARGET_CBX1_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
FOREIGN_NAMES = ("BASE_URL", "JOB_ID", "JOB_ROOT", "OUTPUT_MAPPED_RECORD", "LOGLEVEL")


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "target-cbx1-tests" / f"meltano-4.4-py{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="session")
def meltano_bin() -> Path:
    """Meltano in its own venv in the user's cache, created on first use and kept between runs."""
    venv = cache_dir()
    meltano, ready = venv / "bin" / "meltano", venv / ".installed"
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", MELTANO_SPEC],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
            assert done.returncode == 0, (
                f"Installing {MELTANO_SPEC} into {venv} failed:\n{done.stderr[-4000:]}"
            )
        ready.write_text(MELTANO_SPEC + "\n")
    return meltano


class MeltanoProject:
    """A throwaway Meltano project: the repository's meltano.yml with the local test tap."""

    def __init__(self, root: Path, meltano: Path, sandbox: Sandbox) -> None:
        self.root = root
        self.meltano = meltano
        self.data = root / "hubspot.json"
        self.results = root / "cbx1-results.json"
        root.mkdir()
        project = yaml.safe_load((REPO / "meltano.yml").read_text())
        tap = plugin(project, "extractors", "tap-hubspot")
        tap["pip_url"] = f"-e {FAKE_TAP}"
        tap["executable"] = "tap-hubspot-fake"
        tap["settings"] = [*tap.get("settings", []), {"name": "data_path", "kind": "string"}]
        plugin(project, "loaders", "target-cbx1")["pip_url"] = f"-e {REPO}"
        (root / "meltano.yml").write_text(yaml.safe_dump(project, sort_keys=False))
        self.env = {
            **{k: v for k, v in os.environ.items() if not foreign(k)},
            "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_CLI_DISABLE_VERSION_CHECK": "true",
            "TAP_HUBSPOT_DATA_PATH": str(self.data),
            "TARGET_CBX1_API_URL": sandbox.url,
            "TARGET_CBX1_ACCESS_KEY": ACCESS_KEY,
            "TARGET_CBX1_ORG_ID": ORG_ID,
            "TARGET_CBX1_RESULTS_PATH": str(self.results),
        }

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a meltano command in the project; fail with its output unless it succeeds."""
        command = [str(self.meltano), *args]
        done = subprocess.run(
            command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, (
            f"`meltano {' '.join(args)}` exited with {done.returncode}:\n{output(done)}"
        )
        return done

    def write_data(self, companies: list[dict], contacts: list[dict]) -> None:
        self.data.write_text(json.dumps({"companies": companies, "contacts": contacts}))

    def state(self) -> dict:
        listed = self("state", "list").stdout.split()
        assert STATE_ID in listed, f"Meltano stored no state under {STATE_ID!r}; it has {listed}"
        return json.loads(self("state", "get", STATE_ID).stdout)

    def results_entries(self, stream: str) -> list[dict]:
        return json.loads(self.results.read_text())["bookmarks"][stream]


def plugin(project: dict, kind: str, name: str) -> dict:
    return next(p for p in project["plugins"][kind] if p["name"] == name)


def foreign(name: str) -> bool:
    return name.startswith(FOREIGN_PREFIXES) or name in FOREIGN_NAMES


def output(done: subprocess.CompletedProcess) -> str:
    return f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-8000:]}"


def hubspot_object(number: int, updated: str, **properties: str | None) -> dict:
    """A HubSpot CRM v3 object as tap-hubspot emits it: each property a string, null or absent."""
    return {
        "id": str(number),
        "properties": properties,
        "createdAt": "2025-01-06T09:00:00Z",
        "updatedAt": updated,
        "archived": False,
    }


COMPANIES = [
    hubspot_object(
        1001,
        "2025-02-01T10:00:00Z",
        name="Acme Corp",
        domain="acme.com",
        industry="MANUFACTURING",
        numberofemployees="250",
        annualrevenue="12500000.5",
    ),
    hubspot_object(1002, "2025-02-01T11:00:00Z", name="Globex", domain="globex.io", industry=None),
    hubspot_object(1003, "2025-02-02T09:30:00.250Z", name="No Domain Ltd"),  # fails: no lookup key
]
CONTACTS = [
    hubspot_object(
        2001,
        "2025-02-03T08:00:00Z",
        email="ann.lee@acme.com",
        firstname="Ann",
        lastname="Lee",
        jobtitle="CTO",
    ),
    hubspot_object(2002, "2025-02-03T09:00:00Z", email="Bob@Globex.io", firstname="Bob", company="Globex"),
]
# Added before the second run: a new company, Globex renamed, and a new contact.
NEW_COMPANIES = [
    hubspot_object(1004, "2025-03-01T10:00:00Z", name="Initech", domain="www.initech.com"),
    hubspot_object(1002, "2025-03-02T10:00:00Z", name="Globex Corporation", domain="globex.io"),
]
NEW_CONTACTS = [hubspot_object(2003, "2025-03-03T10:00:00Z", email="erin@initech.com", lastname="Doe")]


@pytest.fixture
def project(tmp_path: Path, meltano_bin: Path, sandbox: Sandbox) -> MeltanoProject:
    project = MeltanoProject(tmp_path / "project", meltano_bin, sandbox)
    project("install", timeout=900)
    return project


def test_meltano_run_syncs_hubspot_incrementally_and_keeps_the_taps_bookmark(project, sandbox):
    project.write_data(COMPANIES, CONTACTS)

    first = project("run", "tap-hubspot", "target-cbx1")

    accounts, contacts = sandbox.records("accounts"), sandbox.records("contacts")
    assert set(accounts) == {"acme.com", "globex.io"}, output(first)
    assert accounts["acme.com"].record == {
        "crmAssociationId": "1001",
        "domain": "acme.com",
        "name": "Acme Corp",
        "industry": "MANUFACTURING",
        "numberOfEmployees": 250,
        "annualRevenue": 12500000.5,
        "createdAt": "2025-01-06T09:00:00Z",
    }
    assert accounts["globex.io"].record["numberOfEmployees"] is None  # absent in HubSpot
    assert accounts["globex.io"].record["industry"] is None  # null in HubSpot
    assert set(contacts) == {"ann.lee@acme.com", "bob@globex.io"}, output(first)
    assert contacts["ann.lee@acme.com"].record == {
        "crmAssociationId": "2001",
        "email": "ann.lee@acme.com",
        "firstName": "Ann",
        "lastName": "Lee",
        "title": "CTO",
        "companyName": None,
        "updatedAt": "2025-02-03T08:00:00Z",
    }
    assert contacts["bob@globex.io"].record["companyName"] == "Globex"

    # Meltano keeps the tap's own bookmark (Singer state), not HotGlue's per-record state line.
    assert project.state() == {
        "singer_state": {
            "bookmarks": {
                "companies": {
                    "replication_key": "updatedAt",
                    "replication_key_value": "2025-02-02T09:30:00.250Z",
                },
                "contacts": {"replication_key": "updatedAt", "replication_key_value": "2025-02-03T09:00:00Z"},
            }
        }
    }, output(first)

    # The per-record outcomes, with CBX1's ids, go to results_path in HotGlue's shape.
    results = json.loads(project.results.read_text())
    assert set(results) == {"bookmarks", "summary"}
    entries = results["bookmarks"]["accounts"]
    assert [(e["externalId"], e["success"], e["lookupKey"]) for e in entries] == [
        ("1001", True, "acme.com"),
        ("1002", True, "globex.io"),
        ("1003", False, None),
    ]
    assert entries[0]["id"] == accounts["acme.com"].id
    assert entries[1]["id"] == accounts["globex.io"].id
    assert entries[2]["error"].startswith("domain is required")
    assert [(e["externalId"], e["id"]) for e in results["bookmarks"]["contacts"]] == [
        ("2001", contacts["ann.lee@acme.com"].id),
        ("2002", contacts["bob@globex.io"].id),
    ]
    assert results["summary"]["accounts"] == {"success": 2, "fail": 1, "existing": 0, "updated": 0}

    # The second run starts from the bookmark: only what changed since is read and sent.
    sent_before = len(sandbox.exchanges)
    project.write_data(COMPANIES + NEW_COMPANIES, CONTACTS + NEW_CONTACTS)

    second = project("run", "tap-hubspot", "target-cbx1")

    sent = {
        (exchange.stream, key) for exchange in sandbox.exchanges[sent_before:] for key in exchange.lookup_keys
    }
    assert sent == {
        ("accounts", "initech.com"),
        ("accounts", "globex.io"),
        ("contacts", "erin@initech.com"),
    }, output(second)
    globex = sandbox.records("accounts")["globex.io"]
    assert (globex.id, globex.writes, globex.record["name"]) == (
        accounts["globex.io"].id,
        2,
        "Globex Corporation",
    )
    assert sandbox.records("contacts")["erin@initech.com"].record["crmAssociationId"] == "2003"
    bookmarks = project.state()["singer_state"]["bookmarks"]
    assert bookmarks["companies"]["replication_key_value"] == "2025-03-02T10:00:00Z"
    assert bookmarks["contacts"]["replication_key_value"] == "2025-03-03T10:00:00Z"
    assert [e["externalId"] for e in project.results_entries("accounts")] == ["1004", "1002"]
    assert [e["externalId"] for e in project.results_entries("contacts")] == ["2003"]


def about_settings() -> dict[str, dict]:
    """The config schema's properties from `target-cbx1 --about --format json` (singer-sdk's too)."""
    about = subprocess.run(
        [str(Path(sys.executable).parent / "target-cbx1"), "--about", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(about.stdout)["settings"]["properties"]


def repository_loader() -> dict:
    return plugin(yaml.safe_load((REPO / "meltano.yml").read_text()), "loaders", "target-cbx1")


def test_repository_meltano_yml_declares_every_target_setting():
    """Every setting `target-cbx1 --about` lists has a Meltano definition, secrets marked sensitive."""
    schema = about_settings()
    loader = repository_loader()
    declared = {setting["name"]: setting for setting in loader["settings"]}
    assert sorted(declared) == sorted(schema)
    secrets = {name for name, spec in schema.items() if spec.get("secret") or spec.get("writeOnly")}
    assert {name for name, setting in declared.items() if setting.get("sensitive")} == secrets
    assert loader["config"]["state_output"] == "singer"


# The Meltano setting kind of a JSON schema type (the first one that is not null).
MELTANO_KINDS = {
    "string": "string",
    "integer": "integer",
    "number": "decimal",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}


def expected_kind(spec: dict) -> str:
    if spec.get("secret") or spec.get("writeOnly"):
        return "password"
    if "enum" in spec:
        return "options"
    return MELTANO_KINDS[next(kind for kind in spec["type"] if kind != "null")]


def test_repository_meltano_yml_describes_every_setting_as_the_target_does():
    """Each loader setting in meltano.yml has a label, the setting's own description and the kind its
    type calls for (password for every secret, options with the allowed values for a choice), and
    settings_group_validation names the settings the Settings model requires. Derived from the
    Settings model and `--about`, so a new setting without Meltano metadata fails here.
    """
    schema = about_settings()
    declared = {setting["name"]: setting for setting in repository_loader()["settings"]}
    problems = []
    for name, spec in schema.items():
        setting = declared.get(name, {})
        label = setting.get("label")
        if not isinstance(label, str) or not label.strip():
            problems.append(f"{name}: no label")
        if setting.get("description") != spec["description"]:
            problems.append(f"{name}: description is not the target's: {spec['description']!r}")
        if setting.get("kind") != expected_kind(spec):
            problems.append(f"{name}: kind {setting.get('kind')!r}, expected {expected_kind(spec)!r}")
        if "enum" in spec and [o.get("value") for o in setting.get("options", [])] != spec["enum"]:
            problems.append(f"{name}: options are not {spec['enum']}")
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        setting = declared.get(name)
        if setting is None:
            problems.append(f"{name}: a setting of target_cbx1.settings.Settings missing from meltano.yml")
            continue
        if setting.get("description") != field.description:
            problems.append(f"{name}: description differs from target_cbx1.settings")
        if extra.get("secret") and (setting.get("kind"), setting.get("sensitive")) != ("password", True):
            problems.append(f"{name}: a secret, so kind: password and sensitive: true")
    assert not problems, "meltano.yml's target-cbx1 settings:\n" + "\n".join(problems)

    required = sorted(name for name, field in Settings.model_fields.items() if field.is_required())
    assert required == ["access_key", "api_url", "org_id"]
    groups = repository_loader().get("settings_group_validation")
    assert [sorted(group) for group in groups or []] == [required]
