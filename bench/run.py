"""`make bench`: target-cbx1's throughput, CPU and memory against the local sandbox, as a table.

Every run is a separate process measured with os.wait4 (user + sys CPU seconds, peak RSS), so the
sandbox's own work is never counted; the CPU comparison takes the median of three runs of each. The
input is HubSpot-shaped contacts (27 fields) as HotGlue's ETL writes them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
ACCESS_KEY, ORG_ID = "bench-key", "bench-org"
CONFIG_NUMBERS = itertools.count()
CONTACT_SCHEMA = {
    "type": "object",
    "properties": {
        **{
            name: {"type": ["string", "null"]}
            for name in (
                "crmAssociationId", "email", "firstName", "lastName", "jobTitle", "phone", "mobilePhone",
                "company", "companyDomain", "website", "address", "city", "state", "country", "zip",
                "lifecycleStage", "leadStatus", "ownerId", "linkedinUrl",
            )
        },
        **{name: {"type": ["string", "null"], "format": "date-time"} for name in ("createdAt", "updatedAt")},
        "numEmployees": {"type": ["integer", "null"]},
        "annualRevenue": {"type": ["number", "null"]},
        "isSubscribed": {"type": ["boolean", "null"]},
        "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        "custom": {
            "type": ["object", "null"],
            "properties": {"segment": {"type": "string"}, "score": {"type": "number"}},
        },
    },
}  # fmt: skip


@dataclass
class Run:
    """One measured process."""

    wall: float
    cpu: float
    peak_rss: int  # bytes
    records: int

    @property
    def per_second(self) -> float:
        return self.records / self.wall


def contact(n: int) -> dict:
    company = f"company{n % 997}"
    return {
        "crmAssociationId": f"{1000000 + n}", "email": f"person{n}@{company}.com", "firstName": "Ann",
        "lastName": f"Lee-{n}", "jobTitle": "VP Sales", "phone": "+1 555 010 0000", "mobilePhone": None,
        "company": company.title(), "companyDomain": f"{company}.com", "website": f"https://www.{company}.com",
        "address": f"{n % 400} Main Street", "city": "Springfield", "state": "IL", "country": "US",
        "zip": "62701", "lifecycleStage": "lead", "leadStatus": "NEW", "ownerId": f"{n % 40}",
        "linkedinUrl": f"https://linkedin.com/in/person{n}", "createdAt": "2024-03-01T09:30:00Z",
        "updatedAt": "2026-11-20T08:00:00.123Z", "numEmployees": 250, "annualRevenue": 12500000.5,
        "isSubscribed": n % 2 == 0, "tags": ["webinar", "q4"],
        "custom": {"segment": "mid-market", "score": 7.5},
    }  # fmt: skip


def write_input(path: Path, count: int) -> Path:
    with path.open("w") as out:
        schema = {"type": "SCHEMA", "stream": "contacts", "schema": CONTACT_SCHEMA, "key_properties": []}
        out.write(json.dumps(schema) + "\n")
        for n in range(count):
            out.write(json.dumps({"type": "RECORD", "stream": "contacts", "record": contact(n)}) + "\n")
    return path


def measure(command: list[str], stdin: Path, records: int) -> Run:
    """Run a command on a file, its stdout and stderr discarded, and read its resource use."""
    started = time.monotonic()
    with stdin.open("rb") as source:
        process = subprocess.Popen(
            command, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, records)


def median_of(times: int, command: list[str], stdin: Path, records: int) -> Run:
    """The run with the median CPU time of several: a single run varies by 10-20% on a busy machine."""
    runs = sorted((measure(command, stdin, records) for _ in range(times)), key=lambda run: run.cpu)
    return runs[len(runs) // 2]


class SandboxProcess:
    """cbx1-sandbox in its own process, so that its CPU is not counted as the target's."""

    def __init__(self, latency_ms: float) -> None:
        command = [str(BIN / "cbx1-sandbox"), "--port", "0", "--latency-ms", str(latency_ms)]
        command += ["--access-key", ACCESS_KEY, "--org-id", ORG_ID, "--exit-after", "900"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().split()[-1]

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def target_command(workdir: Path, url: str, **settings: object) -> list[str]:
    config = workdir / f"config-{next(CONFIG_NUMBERS)}.json"
    config.write_text(json.dumps({"api_url": url, "access_key": ACCESS_KEY, "org_id": ORG_ID, **settings}))
    return [str(BIN / "target-cbx1"), "--config", str(config)]


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__)
    cli.add_argument("--latency-records", type=int, default=6000, help="records for the 50 ms latency runs")
    cli.add_argument("--records", type=int, default=20000, help="records for the CPU and memory runs")
    cli.add_argument("--big", type=int, default=80000, help="records for the second memory run")
    args = cli.parse_args()
    with tempfile.TemporaryDirectory(prefix="cbx1-bench-") as temp:
        workdir = Path(temp)
        small = write_input(workdir / "latency.singer", args.latency_records)
        main_input = write_input(workdir / "main.singer", args.records)
        big = write_input(workdir / "big.singer", args.big)
        rows = []
        with SandboxProcess(latency_ms=50) as sandbox:
            one = measure(
                target_command(workdir, sandbox.url, max_concurrency=1), small, args.latency_records
            )
            default = measure(target_command(workdir, sandbox.url), small, args.latency_records)
        rows.append(("50 ms latency, max_concurrency 1", one, ""))
        rows.append(
            ("50 ms latency, default (8)", default, f"{default.per_second / one.per_second:.1f}x the 1 run")
        )
        with SandboxProcess(latency_ms=0) as sandbox:
            ours = median_of(3, target_command(workdir, sandbox.url), main_input, args.records)
            ours_big = measure(target_command(workdir, sandbox.url), big, args.big)
        plain = median_of(
            3, [sys.executable, str(ROOT / "bench" / "plain_target.py")], main_input, args.records
        )
        floor_code = "import json, sys\nfor line in sys.stdin: json.loads(line)"
        floor = measure([sys.executable, "-c", floor_code], main_input, args.records)
        rows.append(
            (
                "no latency, target-cbx1 (whole record path)",
                ours,
                f"{ours.cpu / plain.cpu:.2f}x plain SDK CPU",
            )
        )
        rows.append(("no latency, plain singer-sdk target", plain, ""))
        rows.append(("bare json.loads loop (floor)", floor, ""))
        rows.append((f"target-cbx1, {args.big} records", ours_big, ""))
    print_table(rows, ours, ours_big, args)
    return 0


def print_table(rows: list[tuple[str, Run, str]], ours: Run, ours_big: Run, args: argparse.Namespace) -> None:
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print()
    print("| Run | Records | Records/s | CPU s | CPU us/record | Peak RSS MiB | Note |")
    print("|:--|--:|--:|--:|--:|--:|:--|")
    for label, run, note in rows:
        print(
            f"| {label} | {run.records} | {run.per_second:,.0f} | {run.cpu:.2f} | "
            f"{run.cpu / run.records * 1e6:.0f} | {run.peak_rss / 2**20:.0f} | {note} |"
        )
    per_record = (ours_big.peak_rss - ours.peak_rss) / (args.big - args.records)
    print()
    growth = f"{args.records} -> {args.big} records"
    print(f"Peak RSS grows by {per_record:.0f} bytes per additional record ({growth}).")


if __name__ == "__main__":
    sys.exit(main())
