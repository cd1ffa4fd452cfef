"""`make meltano-example`: load examples/accounts.jsonl into a local CBX1 sandbox with Meltano.

Starts `cbx1-sandbox` on a free port (its config file in a temporary directory, removed when it
stops), then, in the Meltano project (the repository by default; its .meltano/ is gitignored):

    meltano install tap-jsonl target-cbx1-accounts-file
    meltano run --full-refresh tap-jsonl target-cbx1-accounts-file

with TARGET_CBX1_API_URL, TARGET_CBX1_ACCESS_KEY and TARGET_CBX1_ORG_ID set for the sandbox, and
TARGET_CBX1_RESULTS_PATH in the temporary directory. `--full-refresh` because tap-jsonl's bookmark
is the file's mtime: without it a second run skips the unchanged file, and the fresh sandbox would
get nothing. It then checks GET /_sandbox/records: every account of the file that has a Website is
stored under its normalised domain, and the one without fails with "domain is required". It prints
the target's summary, the per-record outcomes and the bookmark Meltano stored, and exits non-zero
when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORT = Path("examples") / "accounts.jsonl"
EXTRACTOR, LOADER = "tap-jsonl", "target-cbx1-accounts-file"
STATE_ID = f"dev:{EXTRACTOR}-to-{LOADER}"
ACCESS_KEY, ORG_ID = "sandbox-access-key", "sandbox-org"
# Variables that would change what Meltano or the plugins do, dropped from the environment.
FOREIGN_PREFIXES = ("MELTANO_", "TAP_JSONL_", "TARGET_CBX1_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
FOREIGN_NAMES = ("BASE_URL", "JOB_ID", "JOB_ROOT", "OUTPUT_MAPPED_RECORD", "LOGLEVEL")


def fail(message: str, done: subprocess.CompletedProcess[str] | None = None) -> None:
    if done is not None:
        message += f"\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-8000:]}"
    sys.exit(f"meltano-example: {message}")


def bare_domain(website: str) -> str:
    """The lookup key target-cbx1 makes of a Website value (enough for the example's values)."""
    host = website.strip().lower().split("://", 1)[-1].split("/", 1)[0]
    return host.removeprefix("www.").rstrip(".")


def start_sandbox(scratch: Path) -> tuple[subprocess.Popen[str], str]:
    sandbox = Path(sys.executable).parent / "cbx1-sandbox"
    command = [str(sandbox), "--port", "0", "--config-file", str(scratch / "sandbox.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline().strip()  # "CBX1 sandbox listening on http://127.0.0.1:PORT"
    if not first.startswith("CBX1 sandbox listening on "):
        process.terminate()
        fail(f"cbx1-sandbox did not start: {first!r}")
    return process, first.rsplit(" ", 1)[-1]


def meltano_env(url: str, results: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(FOREIGN_PREFIXES) and name not in FOREIGN_NAMES
    }
    env.update(
        MELTANO_SEND_ANONYMOUS_USAGE_STATS="false",
        MELTANO_CLI_DISABLE_VERSION_CHECK="true",
        TARGET_CBX1_API_URL=url,
        TARGET_CBX1_ACCESS_KEY=ACCESS_KEY,
        TARGET_CBX1_ORG_ID=ORG_ID,
        TARGET_CBX1_RESULTS_PATH=str(results),
    )
    return env


def meltano(binary: str, project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [binary, *args], cwd=project, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        fail(f"`meltano {' '.join(args)}` exited with {done.returncode}", done)
    return done


def target_summary(stderr: str) -> list[str]:
    """The target's summary table and failure reasons from `meltano run`'s log."""
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if "Summary per stream" in line), None)
    if start is None:
        return []
    block = []
    for line in lines[start:]:
        if f" {LOADER} " not in line:
            break
        block.append(line.split(f" {LOADER} ", 1)[1].rstrip())
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meltano", default="/tmp/meltano-venv/bin/meltano", help="the meltano executable")
    parser.add_argument(
        "--project-dir", type=Path, default=ROOT, help="the Meltano project (default: this repository)"
    )
    args = parser.parse_args()
    project = args.project_dir.resolve()
    accounts = [json.loads(line) for line in (project / EXPORT).read_text().splitlines() if line.strip()]
    expected = {bare_domain(a["Website"]): a for a in accounts if a.get("Website")}
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="target-cbx1-meltano-example-") as scratch_dir:
        scratch = Path(scratch_dir)
        results = scratch / "cbx1-results.json"
        sandbox, url = start_sandbox(scratch)
        try:
            env = meltano_env(url, results)
            print(f"sandbox: {url}; project: {project}")
            meltano(args.meltano, project, env, "install", EXTRACTOR, LOADER)
            print(f"installed {EXTRACTOR} and {LOADER} ({time.monotonic() - started:.0f} s)")
            run = meltano(args.meltano, project, env, "run", "--full-refresh", EXTRACTOR, LOADER)
            with urllib.request.urlopen(f"{url}/_sandbox/records", timeout=10) as answer:
                stored = json.load(answer).get("accounts", {})
            state = meltano(args.meltano, project, env, "state", "get", STATE_ID).stdout.strip()
            outcomes = json.loads(results.read_text())
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)

    print(f"`meltano run --full-refresh {EXTRACTOR} {LOADER}`:")
    for line in target_summary(run.stderr):
        print(f"  {line}")
    entries = outcomes["bookmarks"]["accounts"]
    for entry in entries:
        outcome = f"id {entry['id']}" if entry["success"] else f"FAILED: {entry['error']}"
        print(f"  {entry['externalId']}  {entry['lookupKey']!s:24} {outcome}")
    print(f"summary: {json.dumps(outcomes['summary'])}")
    print(f"Meltano's bookmark ({STATE_ID}): {state}")

    problems = []
    if set(stored) != set(expected):
        problems.append(f"the sandbox stored {sorted(stored)}, expected {sorted(expected)}")
    for domain, account in expected.items():
        record = stored.get(domain, {}).get("record", {})
        if domain in stored and (record.get("crmAssociationId"), record.get("name")) != (
            account["Id"],
            account["Account Name"],
        ):
            problems.append(f"{domain}: stored {record}, not the mapped export row {account}")
    failed = [e for e in entries if not e["success"]]
    if len(entries) != len(accounts) or [e["externalId"] for e in failed] != [
        a["Id"] for a in accounts if not a.get("Website")
    ]:
        problems.append(f"outcomes: {len(entries)} entries, failures {failed}")
    if any(not e["error"].startswith("domain is required") for e in failed):
        problems.append(f"unexpected failure reasons: {failed}")
    if problems:
        fail("\n".join(problems), run)
    print(
        f"OK: {len(stored)} of {len(accounts)} accounts stored in the sandbox, "
        f"{len(failed)} failed without a domain ({time.monotonic() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
