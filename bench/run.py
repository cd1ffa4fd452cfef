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


ACCOUNT_SCHEMA = {
    "type": "object",
    "properties": {
        "crmAssociationId": {"type": ["string", "null"]},
        "name": {"type": ["string", "null"]},
        "domain": {"type": ["string", "null"]},
        "industry": {"type": ["string", "null"]},
        "numEmployees": {"type": ["integer", "null"]},
    },
}


def write_accounts(path: Path, count: int) -> Path:
    """Small flat account records (five fields), as a HubSpot companies export maps them."""
    with path.open("w") as out:
        schema = {"type": "SCHEMA", "stream": "accounts", "schema": ACCOUNT_SCHEMA, "key_properties": []}
        out.write(json.dumps(schema) + "\n")
        for n in range(count):
            record = {
                "crmAssociationId": f"{2000000 + n}", "name": f"Company {n}", "domain": f"company{n}.com",
                "industry": "Software", "numEmployees": 10 + n % 5000,
            }  # fmt: skip
            out.write(json.dumps({"type": "RECORD", "stream": "accounts", "record": record}) + "\n")
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
    cli.add_argument("--records", type=int, default=40000, help="records for the CPU comparison")
    cli.add_argument("--big", type=int, default=1000000, help="records of the long run (linearity, memory)")
    cli.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the CPU comparison")
    args = cli.parse_args()
    # An installed package runs from bytecode; a source tree with PYTHONDONTWRITEBYTECODE set would
    # compile every module on every start (about 0.1 s), which no user pays.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "target_cbx1"), str(ROOT / "bench")])
    with tempfile.TemporaryDirectory(prefix="cbx1-bench-") as temp:
        workdir = Path(temp)
        rows: list[tuple[str, Run, str]] = []
        rows += latency_rows(workdir, args.latency_records)
        rows += cpu_rows(workdir, args.records, args.rounds)
        scale, notes = scale_rows(workdir, args.big)
        rows += scale
        startup = startup_lines(workdir)
    print_table(rows, [*startup, *notes])
    return 0


def latency_rows(workdir: Path, records: int) -> list[tuple[str, Run, str]]:
    """At 50 ms a request, one request at a time against the default concurrency, on both contracts.

    The rate compared is the target's own (its summary: records over the seconds since the stream
    began), so that the half second of start-up does not weigh on the short concurrent run.
    """
    rows = []
    inputs = {
        "flat": write_input(workdir / "latency.singer", records),
        "envelope": write_envelopes(workdir / "latency-envelope.singer", records),
    }
    with SandboxProcess(latency_ms=50) as sandbox:
        for shape, stdin in inputs.items():
            rates = {}
            for label, settings in (("max_concurrency 1", {"max_concurrency": 1}), ("default (8)", {})):
                log = workdir / f"latency-{shape}-{len(rates)}.log"
                run = measure(target_command(workdir, sandbox.url, **settings), stdin, records, log)
                rates[label] = reported_rate(log)
                note = f"{rates[label]:,.0f} records/s in the target's summary"
                if len(rates) == 2:
                    note += f", {rates[label] / rates['max_concurrency 1']:.1f}x the 1 run"
                rows.append((f"50 ms latency, {shape}, {label}", run, note))
    return rows


def cpu_rows(workdir: Path, records: int, rounds: int) -> list[tuple[str, Run, str]]:
    """CPU against the plain singer-sdk target on the same input, in interleaved rounds."""
    inputs = {
        "small accounts": write_accounts(workdir / "accounts.singer", records),
        "contacts": write_input(workdir / "flat.singer", records),
        "envelope contacts": write_envelopes(workdir / "envelope.singer", records),
    }
    plain_command = [sys.executable, str(ROOT / "bench" / "plain_target.py")]
    runs: dict[str, list[Run]] = {}
    with SandboxProcess(latency_ms=0) as sandbox:
        ours_command = target_command(workdir, sandbox.url)
        for _ in range(rounds):  # interleaved: the machine's drift falls on both alike
            for shape, stdin in inputs.items():
                runs.setdefault(f"ours {shape}", []).append(measure(ours_command, stdin, records))
                runs.setdefault(f"plain {shape}", []).append(measure(plain_command, stdin, records))
    rows = []
    for shape in inputs:
        ours, plain = median(runs[f"ours {shape}"]), median(runs[f"plain {shape}"])
        ratio = f"{ours.cpu / plain.cpu:.2f}x plain SDK CPU (median of {rounds}, interleaved)"
        rows.append((f"no latency, {shape}, target-cbx1", ours, ratio))
        rows.append((f"no latency, {shape}, plain singer-sdk target", plain, ""))
    floor_code = "import json, sys\nfor line in sys.stdin: json.loads(line)"
    floor = measure([sys.executable, "-c", floor_code], inputs["contacts"], records)
    rows.append(("bare json.loads loop over the contacts (floor)", floor, ""))
    return rows


def scale_rows(workdir: Path, big: int) -> tuple[list[tuple[str, Run, str]], list[str]]:
    """A tenth of `big` and `big` records with the incremental state on: CPU and memory per record,
    and what the incremental state cost to write against its final size.
    """
    small = big // 10
    runs = []
    with SandboxProcess(latency_ms=0) as sandbox:
        for count in (small, big):
            stdin = write_input(workdir / f"scale-{count}.singer", count)
            journal = workdir / f"incremental-{count}.json"
            command = target_command(workdir, sandbox.url, incremental_state_path=str(journal))
            log = workdir / f"scale-{count}.log"
            runs.append((measure(command, stdin, count, log), log))
            stdin.unlink()
    (first, _), (second, log) = runs
    linear = (second.cpu / second.records) / (first.cpu / first.records)
    rows = [
        (f"incremental state on, {small} records", first, ""),
        (f"incremental state on, {big} records", second, f"{linear:.2f}x the CPU per record"),
    ]
    per_record = (second.peak_rss - first.peak_rss) / (big - small)
    notes = [
        f"Peak RSS grows by {per_record:.0f} bytes per additional record ({small} -> {big} records).",
        journal_line(log),
    ]
    return rows, notes


def startup_lines(workdir: Path) -> list[str]:
    """`--about` and a one-record run, ours against the plain target (medians of 5, interleaved)."""
    stdin = write_input(workdir / "one.singer", 1)
    plain = [sys.executable, str(ROOT / "bench" / "plain_target.py")]
    walls: dict[str, list[float]] = {}
    with SandboxProcess(latency_ms=0) as sandbox:
        commands = {
            "ours --about": [str(BIN / "target-cbx1"), "--about"],
            "plain --about": [*plain, "--about"],
            "ours one record": target_command(workdir, sandbox.url),
            "plain one record": plain,
        }
        for _ in range(5):
            for label, command in commands.items():
                walls.setdefault(label, []).append(measure(command, stdin, 1).wall)
    wall = {label: sorted(times)[2] for label, times in walls.items()}
    return [
        f"Start-up: --about {wall['ours --about']:.2f} s (plain SDK target {wall['plain --about']:.2f} s); "
        f"a one-record run {wall['ours one record']:.2f} s (plain {wall['plain one record']:.2f} s, "
        f"+{wall['ours one record'] - wall['plain one record']:.2f} s). Wall seconds, medians of 5."
    ]


def reported_rate(log: Path) -> float:
    """The records/s of the target's summary row (its last column)."""
    rows = [line for line in log.read_text().splitlines() if "|   contacts " in line]
    if not rows:
        raise SystemExit(f"no summary row in {log}")
    return float(rows[-1].split()[-1])


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


def print_table(rows: list[tuple[str, Run, str]], notes: list[str]) -> None:
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print()
    print("| Run | Records | Records/s | CPU s | CPU us/record | Peak RSS MiB | Note |")
    print("|:--|--:|--:|--:|--:|--:|:--|")
    for label, run, note in rows:
        print(
            f"| {label} | {run.records} | {run.per_second:,.0f} | {run.cpu:.2f} | "
            f"{run.cpu / run.records * 1e6:.0f} | {run.peak_rss / 2**20:.0f} | {note} |"
        )
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    sys.exit(main())
