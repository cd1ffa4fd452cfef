"""`make demo`: run target-cbx1 on the sample HubSpot export and summarise the state line per stream."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "hubspot_export.singer"
CONFIG = ROOT / "config.json"
STATE = ROOT / ".demo" / "state.json"
TARGET = Path(sys.executable).parent / "target-cbx1"


def sample_counts() -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for line in SAMPLE.read_text().splitlines():
        message = json.loads(line)
        if message["type"] == "RECORD":
            counts[message["stream"]] += 1
    return dict(counts)


def print_summary(state: dict) -> None:
    for stream, entries in state["bookmarks"].items():
        summary = state["summary"][stream]
        print(
            f"{stream}: {len(entries)} records: {summary['success']} succeeded, {summary['updated']} "
            f"updated, {summary['fail']} failed, {summary['existing']} existing (identical, sent once)"
        )
        for entry in entries:
            outcome = f"id {entry['id']}" if entry["success"] else f"FAILED: {entry['error']}"
            print(f"  {entry['externalId']!s:>10}  {entry['lookupKey']!s:<28} {outcome}")


def main() -> int:
    if not CONFIG.exists():
        print(
            "No CBX1 API is configured, so nothing is sent. To run the demo against CBX1, copy\n"
            "config.sample.json to config.json, fill in api_url, access_key and org_id, and run\n"
            "`make demo` again."
        )
        print(f"The sample input {SAMPLE.relative_to(ROOT)} holds records per stream: {sample_counts()}")
        return 0
    STATE.parent.mkdir(exist_ok=True)
    with SAMPLE.open() as stdin, STATE.open("w") as stdout:
        run = subprocess.run([str(TARGET), "--config", str(CONFIG)], stdin=stdin, stdout=stdout, check=False)
    if run.returncode != 0:
        print(f"target-cbx1 exited with {run.returncode}; its log above says why.")
        return run.returncode
    print_summary(json.loads(STATE.read_text().splitlines()[-1]))
    print(f"HotGlue's state line was written to {STATE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
