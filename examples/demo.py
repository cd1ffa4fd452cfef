"""`make demo`: start the sandbox, run target-cbx1 on sample exports of both shapes, summarise the outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

from target_cbx1.sandbox import DEFAULT_ACCESS_KEY, DEFAULT_ORG_ID, Sandbox

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEFAULT_OUTPUT = ROOT / ".demo"
TARGET = Path(sys.executable).parent / "target-cbx1"


class Run(t.NamedTuple):
    """One job: a sample export, what it shows, and the environment HotGlue would set for it."""

    name: str
    sample: Path
    about: str
    environment: dict[str, str]


RUNS = (
    Run("hubspot-flat", EXAMPLES / "hubspot_export.singer", "flat HubSpot records, to /bulk", {}),
    Run(
        "hubspot-envelopes",
        EXAMPLES / "envelopes" / "hubspot.singer",
        "HubSpot envelopes, to the records endpoint (source from CONNECTOR_ID=hubspot)",
        {"CONNECTOR_ID": "hubspot"},
    ),
    Run(
        "salesforce-envelopes",
        EXAMPLES / "envelopes" / "salesforce.singer",
        "Salesforce envelopes (Account, Contact, Lead), to the records endpoint",
        {},
    ),
    Run(
        "marketo-envelopes",
        EXAMPLES / "envelopes" / "marketo.singer",
        "Marketo leads, to the records endpoint",
        {},
    ),
)


def run_target(sandbox: Sandbox, run: Run, output: Path) -> int:
    """Run the real command as HotGlue does: config file, stdin in, state line out, log on stderr."""
    output.mkdir(parents=True, exist_ok=True)
    config = {"api_url": sandbox.url, "Code": DEFAULT_ACCESS_KEY, "OrgId": DEFAULT_ORG_ID}
    (output / "config.json").write_text(json.dumps(config, indent=2))
    environment = {**{k: v for k, v in os.environ.items() if k != "CONNECTOR_ID"}, **run.environment}
    with (
        run.sample.open() as stdin,
        (output / "state.json").open("w") as stdout,
        (output / "target.log").open("w") as log,
    ):
        command = [str(TARGET), "--config", str(output / "config.json")]
        return subprocess.run(
            command, stdin=stdin, stdout=stdout, stderr=log, env=environment, check=False
        ).returncode


def shown(path: Path) -> str:
    """A path as the reader typed their way to it: relative to the working directory when inside it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def print_summary(state: dict, requests: list[tuple[str | None, str, int]]) -> None:
    """The requests the sandbox saw for this run, then every record's outcome per stream."""
    paths: dict[str, list[int]] = {}
    for source, target, records in requests:
        path = f"integrations/{source}/{target}/records" if source else target
        paths.setdefault(path, []).append(records)
    for path, sizes in paths.items():
        print(f"  {plural(sum(sizes), 'record')} sent in {plural(len(sizes), 'request')} to {path}")
    for stream, entries in state["bookmarks"].items():
        summary = state["summary"][stream]
        print(
            f"\n  {stream}: {plural(len(entries), 'record')} read: {summary['success']} succeeded, "
            f"{summary['fail']} failed, {summary['existing']} existing (a repeat of an earlier record, "
            "or data CBX1 already held)"
        )
        print(f"    {'CRM id':<20} {'lookup key':<36} outcome")
        for entry in entries:
            outcome = f"CBX1 id {entry['id']}" if entry["success"] else f"FAILED: {entry['error']}"
            crm_id = entry["externalId"] or "-"
            print(f"    {crm_id:<20} {entry['lookupKey'] or '-':<36} {outcome}")


def main(output: Path = DEFAULT_OUTPUT) -> int:
    """Run the demo, keeping each job's config, state line and log under `output`."""
    with Sandbox() as sandbox:
        print(f"CBX1 sandbox listening on {sandbox.url}")
        for run in RUNS:
            print(f"\n== {run.about}: target-cbx1 < {run.sample.relative_to(ROOT)}")
            seen = len(sandbox.exchanges)
            returncode = run_target(sandbox, run, output / run.name)
            if returncode != 0:
                print(
                    f"target-cbx1 exited with {returncode}; {shown(output / run.name)}/target.log says why."
                )
                return returncode
            state = json.loads((output / run.name / "state.json").read_text().splitlines()[-1])
            exchanges = sandbox.exchanges[seen:]
            print_summary(state, [(e.source, e.stream, len(e.lookup_keys)) for e in exchanges])
        accounts, contacts = len(sandbox.records("accounts")), len(sandbox.records("contacts"))
        entities = {kind: len(sandbox.entities(kind)) for kind in ("ACCOUNT", "CONTACT")}
    print(
        f"\nThe sandbox now holds {accounts} accounts and {contacts} contacts from /bulk, and "
        f"{entities['ACCOUNT']} ACCOUNT and {entities['CONTACT']} CONTACT entities from the records "
        "endpoint, one per lookup key."
    )
    print(f"Each job's state line, config and log: {shown(output)}/<job>/state.json, config.json, target.log")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
