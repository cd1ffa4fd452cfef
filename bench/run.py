"""`make bench`: target-cbx1's throughput, CPU and memory against the local sandbox, as a table.

Every run is a separate process measured with os.wait4 (user + sys CPU seconds, peak RSS), so the
sandbox's own work is never counted. The CPU comparison with a plain singer-sdk target takes the
median of interleaved rounds (ours, plain, ours, plain...), so a machine whose speed drifts weighs
on both alike. The input is HubSpot-shaped contacts (27 fields), flat as HotGlue's ETL writes them
and as the envelopes CBX1's own ETL writes for the records endpoint. With the incremental state on,
the target's log says how many bytes it wrote, against the final file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
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


ENVELOPE_TYPES = ["null", "boolean", "string", "integer", "number", "object"]
ENVELOPE_SCHEMA = {
    "type": "object",
    "properties": {
        name: {"type": ENVELOPE_TYPES} for name in ("data", "sourceRecordId", "source", "lookupKey")
    },
}


def write_envelopes(path: Path, count: int) -> Path:
    """The same contacts as CBX1's ETL writes them for the records endpoint."""
    with path.open("w") as out:
        schema = {"type": "SCHEMA", "stream": "contacts", "schema": ENVELOPE_SCHEMA, "key_properties": []}
        out.write(json.dumps(schema) + "\n")
        for n in range(count):
            data = contact(n)
            envelope = {"data": data, "sourceRecordId": data["crmAssociationId"], "source": "HUBSPOT"}
            record = {**envelope, "lookupKey": data["email"]}
            out.write(json.dumps({"type": "RECORD", "stream": "contacts", "record": record}) + "\n")
    return path


def measure(command: list[str], stdin: Path, records: int, log: Path | None = None) -> Run:
    """Run a command on a file, its stdout discarded (stderr kept in `log`), and read its resource use."""
    started = time.monotonic()
    with stdin.open("rb") as source, log.open("wb") if log else open(os.devnull, "wb") as errors:
        process = subprocess.Popen(command, stdin=source, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, records)


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
    cli.add_argument(
        "--records", type=int, default=20000, help="records for the CPU runs and the first memory run"
    )
    cli.add_argument(
        "--big", type=int, default=100000, help="records for the second memory and linearity run"
    )
    cli.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the CPU comparison")
    args = cli.parse_args()
    with tempfile.TemporaryDirectory(prefix="cbx1-bench-") as temp:
        workdir = Path(temp)
        inputs = {
            "flat": write_input(workdir / "flat.singer", args.records),
            "envelope": write_envelopes(workdir / "envelope.singer", args.records),
        }
        small = {"flat": write_input(workdir / "latency.singer", args.latency_records)}
        small["envelope"] = write_envelopes(workdir / "latency-envelope.singer", args.latency_records)
        big = write_input(workdir / "big.singer", args.big)
        rows: list[tuple[str, Run, str]] = []
        with SandboxProcess(latency_ms=50) as sandbox:
            for shape, stdin in small.items():
                one = measure(
                    target_command(workdir, sandbox.url, max_concurrency=1), stdin, args.latency_records
                )
                default = measure(target_command(workdir, sandbox.url), stdin, args.latency_records)
                rows.append((f"50 ms latency, {shape}, max_concurrency 1", one, ""))
                ratio = f"{default.per_second / one.per_second:.1f}x the 1 run"
                rows.append((f"50 ms latency, {shape}, default (8)", default, ratio))
        plain_command = [sys.executable, str(ROOT / "bench" / "plain_target.py")]
        runs: dict[str, list[Run]] = {}
        with SandboxProcess(latency_ms=0) as sandbox:
            ours_command = target_command(workdir, sandbox.url)
            for _ in range(args.rounds):  # interleaved: the machine's drift falls on both alike
                for shape, stdin in inputs.items():
                    runs.setdefault(f"ours {shape}", []).append(measure(ours_command, stdin, args.records))
                    runs.setdefault(f"plain {shape}", []).append(measure(plain_command, stdin, args.records))
            journal = workdir / "incremental.json"
            kept = target_command(workdir, sandbox.url, incremental_state_path=str(journal))
            first = measure(kept, inputs["flat"], args.records)
            journal.unlink()
            log = workdir / "big.log"
            second = measure(kept, big, args.big, log)
        for shape in inputs:
            ours, plain = median(runs[f"ours {shape}"]), median(runs[f"plain {shape}"])
            ratio = f"{ours.cpu / plain.cpu:.2f}x plain SDK CPU (median of {args.rounds}, interleaved)"
            rows.append((f"no latency, {shape}, target-cbx1", ours, ratio))
            rows.append((f"no latency, {shape}, plain singer-sdk target", plain, ""))
        floor_code = "import json, sys\nfor line in sys.stdin: json.loads(line)"
        rows.append(
            (
                "bare json.loads loop (floor)",
                measure([sys.executable, "-c", floor_code], inputs["flat"], args.records),
                "",
            )
        )
        rows.append((f"target-cbx1, incremental state on, {args.records} records", first, ""))
        linear = (second.cpu / second.records) / (first.cpu / first.records)
        rows.append(
            (
                f"target-cbx1, incremental state on, {args.big} records",
                second,
                f"{linear:.2f}x the CPU per record",
            )
        )
        journal_account = journal_line(log)
    print_table(rows, first, second, args, journal_account)
    return 0


def median(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.cpu)[len(runs) // 2]


def journal_line(log: Path) -> str:
    """The target's own account of what the incremental state cost to write."""
    lines = [line for line in log.read_text().splitlines() if "bytes written in all" in line]
    if not lines:
        return "Incremental state: no account in the log"
    written, final = (int(number) for number in re.findall(r"(\d+) bytes", lines[-1]))
    ratio = written / final
    return (
        f"Incremental state: {written:,} bytes written in all for a final file of {final:,} ({ratio:.2f}x)."
    )


def print_table(
    rows: list[tuple[str, Run, str]], ours: Run, ours_big: Run, args: argparse.Namespace, journal: str
) -> None:
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
    print(journal)


if __name__ == "__main__":
    sys.exit(main())
