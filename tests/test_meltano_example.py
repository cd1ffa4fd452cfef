"""The file-to-CBX1 example: examples/accounts.jsonl -> tap-jsonl -> target-cbx1-accounts-file.

The end-to-end test runs scripts/meltano_example.py (what `make meltano-example` runs) in a
throwaway copy of the project: the repository's meltano.yml, with the loader installed from this
repository, and examples/accounts.jsonl. It needs a Meltano 4.4 executable and the package index
(for tap-jsonl), so it is skipped unless one is found: $MELTANO_EXAMPLE_BIN, else
/tmp/meltano-venv/bin/meltano, which `make meltano-example` creates. The other tests read
meltano.yml and the example file only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXPORT = REPO / "examples" / "accounts.jsonl"
MELTANO = Path(os.environ.get("MELTANO_EXAMPLE_BIN") or "/tmp/meltano-venv/bin/meltano")


def project_plugin(kind: str, name: str) -> dict:
    project = yaml.safe_load((REPO / "meltano.yml").read_text())
    return next(p for p in project["plugins"][kind] if p["name"] == name)


def test_the_export_has_accounts_with_and_without_a_website():
    accounts = [json.loads(line) for line in EXPORT.read_text().splitlines()]
    assert len(accounts) == 10
    assert [a["Id"] for a in accounts if not a.get("Website")] == ["0015g00000A8"]
    assert len({a["Id"] for a in accounts}) == len(accounts)


def test_meltano_yml_defines_the_file_pipeline():
    tap = project_plugin("extractors", "tap-jsonl")
    assert tap["pip_url"].startswith("tap-jsonl==")  # pinned: it brings its own singer-sdk
    assert (REPO / tap["config"]["path"]) == EXPORT
    assert tap["config"]["stream_name"] == "accounts"
    loader = project_plugin("loaders", "target-cbx1-accounts-file")
    assert loader["inherit_from"] == "target-cbx1"
    assert "pip_url" not in loader  # the parent's venv and settings
    mapping = loader["config"]["stream_maps"]["accounts"]
    assert mapping["domain"] == "Website"
    assert mapping["__key_properties__"] == ["crmAssociationId"]
    assert loader["config"]["stream_maps"]["__else__"] == "__NULL__"


@pytest.mark.skipif(
    not os.access(MELTANO, os.X_OK),
    reason=f"no Meltano at {MELTANO}: run `make meltano-example` once (or set MELTANO_EXAMPLE_BIN)",
)
def test_make_meltano_example_loads_the_export_into_the_sandbox(tmp_path):
    project = tmp_path / "project"
    (project / "examples").mkdir(parents=True)
    (project / "examples" / "accounts.jsonl").write_text(EXPORT.read_text())
    meltano_yml = yaml.safe_load((REPO / "meltano.yml").read_text())
    loader = next(p for p in meltano_yml["plugins"]["loaders"] if p["name"] == "target-cbx1")
    loader["pip_url"] = f"-e {REPO}"
    (project / "meltano.yml").write_text(yaml.safe_dump(meltano_yml, sort_keys=False))

    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "meltano_example.py"),
            "--meltano",
            str(MELTANO),
            "--project-dir",
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    assert done.returncode == 0, f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr[-8000:]}"
    assert "OK: 9 of 10 accounts stored in the sandbox, 1 failed without a domain" in done.stdout
    assert '"success": 9, "fail": 1' in done.stdout
    assert "0015g00000A8  None" in done.stdout
    assert "FAILED: domain is required" in done.stdout
    assert '"replication_key":"_sdc_last_modified"' in done.stdout  # Meltano stored tap-jsonl's bookmark
