"""`make demo`: start the sandbox, run target-cbx1 on the sample HubSpot export, summarise the outcome."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

from target_cbx1.sandbox import DEFAULT_ACCESS_KEY, DEFAULT_ORG_ID, Sandbox

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "hubspot_export.singer"
DEFAULT_OUTPUT = ROOT / ".demo"
TARGET = Path(sys.executable).parent / "target-cbx1"


def run_target(sandbox: Sandbox, output: Path) -> int:
    """Run the real command as HotGlue does: config file, stdin in, state line out, log on stderr."""
    config = {"api_url": sandbox.url, "Code": DEFAULT_ACCESS_KEY, "OrgId": DEFAULT_ORG_ID}
    (output / "config.json").write_text(json.dumps(config, indent=2))
    with (
        SAMPLE.open() as stdin,
        (output / "state.json").open("w") as stdout,
        (output / "target.log").open("w") as log,
    ):
        command = [str(TARGET), "--config", str(output / "config.json")]
        return subprocess.run(command, stdin=stdin, stdout=stdout, stderr=log, check=False).returncode


def shown(path: Path) -> str:
    """A path as the reader typed their way to it: relative to the working directory when inside it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def print_summary(state: dict, sandbox: Sandbox) -> None:
    sent: dict[str, int] = collections.Counter()
    requests: dict[str, int] = collections.Counter()
    for exchange in sandbox.exchanges:
        sent[exchange.stream] += len(exchange.lookup_keys)
        requests[exchange.stream] += 1
    for stream, entries in state["bookmarks"].items():
        summary = state["summary"][stream]
        sending = f"{sent[stream]} sent in {plural(requests[stream], 'request')}"
        print(
            f"\n{stream}: {len(entries)} records read, {sending}: "
            f"{summary['success']} succeeded, {summary['fail']} failed, "
            f"{summary['existing']} existing (identical to an earlier record, not sent again)"
        )
        print(f"  {'CRM id':<8} {'lookup key':<24} outcome")
        for entry in entries:
            outcome = f"CBX1 id {entry['id']}" if entry["success"] else f"FAILED: {entry['error']}"
            print(f"  {entry['externalId'] or '-':<8} {entry['lookupKey'] or '-':<24} {outcome}")


def main(output: Path = DEFAULT_OUTPUT) -> int:
    """Run the demo, keeping its config, state line and log in `output`."""
    output.mkdir(parents=True, exist_ok=True)
    with Sandbox() as sandbox:
        print(f"CBX1 sandbox listening on {sandbox.url}")
        print(f"Running target-cbx1 on {SAMPLE.relative_to(ROOT)} ...")
        returncode = run_target(sandbox, output)
        if returncode != 0:
            print(f"target-cbx1 exited with {returncode}; {shown(output / 'target.log')} says why.")
            return returncode
        state = json.loads((output / "state.json").read_text().splitlines()[-1])
        print_summary(state, sandbox)
        stored = [plural(len(sandbox.records(stream)), stream.rstrip("s")) for stream in state["bookmarks"]]
    print(f"\nThe sandbox now holds {' and '.join(stored)}, one per lookup key.")
    print(f"HotGlue's state line: {shown(output / 'state.json')}")
    print(f"The target's log: {shown(output / 'target.log')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
