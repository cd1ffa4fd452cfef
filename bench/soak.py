"""`make soak`: the real target-cbx1 against the chaos sandbox, killed and resumed, checked against the store.

For each seed: N records (flat accounts and contacts for /bulk, envelope accounts, contacts and leads
for the records endpoint; about 5% repeated lookup keys, 1% failing a local check, 1% that CBX1
rejects) go through the `target-cbx1` command with `incremental_state_path` set, against a sandbox
in chaos mode. The run is killed with SIGKILL at random moments and started again on the same input
until the input is done; then one last run with chaos off. The sandbox notes every request (its run,
when it arrived and when its answer was out or the client hung up, the records in it) and every
write; bench/soak_check.py then checks the state against what the sandbox saw and holds. It prints
one table and exits 1 if there is any violation.

    python bench/soak.py --records 100000 --seeds 1,2,3,4,5 --kills 5 [--json FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import soak_check as check
from soak_check import Attempt, Findings, InputRecord

from target_cbx1.sandbox.chaos import DEFAULT_RATES, Chaos
from target_cbx1.sandbox.server import DATA_PATH, RECORDS_PATH, Answer, Sandbox, Wait
from target_cbx1.sandbox.store import Outcome

COMMAND = str(Path(sys.executable).parent / "target-cbx1")
PROBE = Path(__file__).resolve().parent / "soak_probe"  # its sitecustomize notes each request's start
ACCESS_KEY = "soak-access-key-8f3e1c7a9b2d4e6f"
ORG_ID = "soak-org"
REJECTING_OWNER = "nobody"
REJECTION = f"Owner '{REJECTING_OWNER}' not found"
# stream: (scope, contract, share of the records, SOURCE of its envelopes)
STREAMS = {
    "accounts": ("accounts", "flat", 0.25, None),
    "contacts": ("contacts", "flat", 0.25, None),
    "crm_accounts": ("ACCOUNT", "envelope", 0.15, "HUBSPOT"),
    "crm_contacts": ("CONTACT", "envelope", 0.20, "HUBSPOT"),
    "crm_leads": ("CONTACT", "envelope", 0.15, "SALESFORCE"),
}
KEY_FORMATS = {
    "accounts": "company{}.example.com",
    "contacts": "person{}@flat.example.com",
    "ACCOUNT": "org{}.example.org",
    "CONTACT": "lead{}@crm.example.org",
}
REPEATS, LOCAL_INVALID, REJECTED = 0.05, 0.01, 0.01
# Short timeouts and backoffs, so that a soak of 100k records takes minutes; slow answers outlast timeout.
TARGET_SETTINGS = {
    "timeout": 1,
    "max_retries": 6,
    "backoff_base_seconds": 0.02,
    "backoff_max_seconds": 0.2,
    "retry_after_max_seconds": 5,
    "max_concurrency": 4,
    "max_requests_per_second": 100,
    "max_consecutive_request_failures": 20,
}
SLOW_SECONDS = 1.5
# The sandbox's default fault rates, but fewer 429s: every 429 halves the target's request rate, and
# 429s drawn at random, whatever the rate, would hold it near 1 request a second (at the default 4%)
# and the soak would take hours. The other kinds keep their defaults.
CHAOS_RATES = {**DEFAULT_RATES, "429": 0.004, "429-bare": 0.002}
RUN_LIMIT = 60  # runs of one seed before the soak calls the input never done
RUN_SECONDS = 1800  # a run still going after this long hangs: it is killed and reported
HUNG = -1000  # the exit status _run_target gives a run it killed for hanging


def make_input(count: int, seed: int) -> tuple[list[str], list[InputRecord]]:
    """The Singer lines of the input and what each record is; the same seed gives the same input."""
    draw = random.Random(f"input/{seed}")
    lines = [json.dumps(_schema(stream)) for stream in STREAMS]
    records, pools = [], collections.defaultdict(list)
    streams, weights = list(STREAMS), [share for _, _, share, _ in STREAMS.values()]
    for seq in range(count):
        stream = draw.choices(streams, weights)[0]
        scope, contract, _, source = STREAMS[stream]
        design = draw.choices(
            ["valid", "local", "rejected"], [1 - LOCAL_INVALID - REJECTED, LOCAL_INVALID, REJECTED]
        )[0]
        key = _key(draw, pools[scope], scope) if design != "local" else None
        record = InputRecord(
            seq, stream, scope, key, f"{stream}-{seq}", design, REJECTION if design == "rejected" else None
        )
        records.append(record)
        lines.append(
            json.dumps({"type": "RECORD", "stream": stream, "record": _body(record, contract, source)})
        )
        if seq % 1000 == 999:
            lines.append(json.dumps({"type": "STATE", "value": {"bookmarks": {"soak": seq}}}))
    return lines, records


def _key(draw: random.Random, pool: list[str], scope: str) -> str:
    """A lookup key: now and then one used before (often a recent one), else a new one."""
    if pool and draw.random() < REPEATS:
        return draw.choice(pool[-50:]) if draw.random() < 0.5 else draw.choice(pool)
    pool.append(KEY_FORMATS[scope].format(len(pool)))
    return pool[-1]


def _body(record: InputRecord, contract: str, source: str | None) -> dict[str, t.Any]:
    owner = REJECTING_OWNER if record.design == "rejected" else f"owner{record.seq % 7}"
    if contract == "flat":
        field_name = "domain" if record.scope == "accounts" else "email"
        value = record.key if record.design != "local" else ("not a domain" if record.seq % 2 else None)
        return {
            "crmAssociationId": record.external_id,
            field_name: value,
            "owner": owner,
            "soakSeq": record.seq,
        }
    data = {"name": f"Record {record.seq}", "owner": owner, "soakSeq": record.seq}
    envelope = {"data": data, "sourceRecordId": record.external_id, "source": source}
    if record.key is not None:
        envelope["lookupKey"] = record.key
    return envelope


def _schema(stream: str) -> dict[str, t.Any]:
    scope, contract, _, _ = STREAMS[stream]
    text = {"type": ["string", "null"]}
    if contract == "flat":
        field_name = "domain" if scope == "accounts" else "email"
        properties = {
            "crmAssociationId": text,
            field_name: text,
            "owner": text,
            "soakSeq": {"type": "integer"},
        }
        return {
            "type": "SCHEMA",
            "stream": stream,
            "schema": {"properties": properties},
            "key_properties": ["crmAssociationId"],
        }
    properties = {"data": {"type": "object"}, "lookupKey": text, "sourceRecordId": text, "source": text}
    return {
        "type": "SCHEMA",
        "stream": stream,
        "schema": {"properties": properties},
        "key_properties": ["sourceRecordId"],
    }


class SoakSandbox(Sandbox):
    """The chaos sandbox, noting every data request (an Attempt), every write, and every token issued.
    Records with owner 'nobody' are refused, as CBX1 refuses an unknown owner."""

    def __init__(self, chaos: Chaos) -> None:
        super().__init__(access_key=ACCESS_KEY, org_id=ORG_ID, seed=chaos.seed, chaos=chaos)
        self.run = 0
        self.attempts: list[Attempt] = []
        self.writes: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
        self.issued: list[str] = []
        self._store_upsert, self._store_ingest = self.store.upsert, self.entity_store.ingest
        self.store.upsert = self._noted_upsert  # type: ignore[method-assign]
        self.entity_store.ingest = self._noted_ingest  # type: ignore[method-assign]

    def respond(
        self, method: str, target: str, headers: t.Mapping[str, str], body: bytes, wait: Wait = time.sleep
    ) -> Answer | None:
        path = urlsplit(target).path
        items = self._items(path, body) if method == "POST" else None
        run, started = self.run, time.monotonic()  # the run that sent it: a kill may end it meanwhile
        answer = super().respond(method, target, headers, body, wait)
        if items is not None:
            self.attempts.append(Attempt(run, started, time.monotonic(), items))
        return answer

    def _issue_token(self, query: dict[str, list[str]]) -> Answer:
        answer = super()._issue_token(query)
        if answer.status == 200:
            self.issued.append(json.loads(answer.body)["data"]["sessionToken"])
        return answer

    def _items(self, path: str, body: bytes) -> tuple[tuple[str, str | None, int | None], ...] | None:
        """(scope, key, seq) of each record of a data request; None for a request that is not one."""
        try:
            payload = json.loads(body)
            if match := DATA_PATH.match(path):
                stream = unquote(match["stream"])
                records = payload if isinstance(payload, list) else [payload]
                return tuple((stream, self.store.key_of(stream, r), r.get("soakSeq")) for r in records)
            if match := RECORDS_PATH.match(path):
                scope = unquote(match["object_type"])
                return tuple(
                    (scope, self.entity_store.key_of(scope, r), (r.get("data") or {}).get("soakSeq"))
                    for r in payload["records"]
                )
        except (ValueError, TypeError, KeyError, AttributeError):
            return ()
        return None

    def _noted_upsert(self, stream: str, record: t.Any) -> Outcome:
        if isinstance(record, dict) and record.get("owner") == REJECTING_OWNER:
            return Outcome(self.store.key_of(stream, record), error=REJECTION)
        outcome = self._store_upsert(stream, record)
        if outcome.error is None and outcome.lookup_key is not None:
            self.writes[(stream, outcome.lookup_key)].add(record.get("soakSeq"))
        return outcome

    def _noted_ingest(self, source: str, object_type: str, record: dict[str, t.Any]) -> dict[str, t.Any]:
        data = record.get("data")
        if isinstance(data, dict) and data.get("owner") == REJECTING_OWNER:
            key = self.entity_store.key_of(object_type, record)
            return {"status": "FAILED", "entityId": None, "lookupKey": key, "error": REJECTION}
        result = self._store_ingest(source, object_type, record)
        if result["status"] == "SUCCESS":
            self.writes[(object_type, result["lookupKey"])].add(data.get("soakSeq"))
        return result

    def held(self) -> dict[tuple[str, str], tuple[str, int]]:
        """(scope, key) -> (CBX1 id, the soakSeq of the data it holds)."""
        held = {}
        for stream in ("accounts", "contacts"):
            for key, stored in self.records(stream).items():
                held[(stream, key)] = (stored.id, stored.record.get("soakSeq"))
        for object_type in ("ACCOUNT", "CONTACT"):
            for key, entity in self.entities(object_type).items():
                held[(object_type, key)] = (entity.id, entity.data.get("soakSeq"))
        return held


@dataclass
class SeedResult:
    """What one seed's soak did and found."""

    seed: int
    records: int
    seconds: float = 0
    kills: int = 0
    runs: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    held_but_failed: int = 0  # after the chaos runs (answers lost)
    held_but_failed_after_clean_run: int = 0
    chaos: Findings = field(default_factory=Findings)  # the state of the last run with chaos on
    final: Findings = field(default_factory=Findings)  # the state after the last run, chaos off
    requests: Findings = field(default_factory=Findings)  # in flight, rate, re-sends, secrets, exits


def soak_seed(seed: int, count: int, kills: int, workdir: Path) -> SeedResult:
    """Kill and resume the target on one seed's input until it is done, then check everything."""
    started = time.monotonic()
    lines, records = make_input(count, seed)
    result = SeedResult(seed, count)
    source = workdir / "input.singer"
    source.write_text("\n".join(lines) + "\n")
    state_path = workdir / "incremental_state.json"
    chaos = Chaos(seed=seed, rates=dict(CHAOS_RATES), slow_seconds=SLOW_SECONDS)
    by_id = {(record.stream, record.external_id): record.seq for record in records}
    confirmed_at_start: dict[int, set[int]] = {}
    starts: dict[int, list[float]] = {}  # per run, when each request started, from the target's side
    kill_draw = random.Random(f"kills/{seed}")
    with SoakSandbox(chaos) as sandbox:
        config = workdir / "config.json"
        settings = {"api_url": sandbox.url, "access_key": ACCESS_KEY, "org_id": ORG_ID, **TARGET_SETTINGS}
        config.write_text(json.dumps({**settings, "incremental_state_path": str(state_path)}))
        chaos_state, final_state, chaos_held = None, None, {}
        while final_state is None:
            run = result.runs
            if run >= RUN_LIMIT:
                result.requests.violate("the input is done", f"still not done after {run} runs")
                break
            sandbox.run, result.runs = run, run + 1
            confirmed_at_start[run] = _confirmed(state_path, by_id)
            clean = chaos_state is not None
            sandbox.chaos = None if clean else chaos
            kill_after = None
            if not clean and result.kills < kills:
                remaining = (count - len(confirmed_at_start[run])) // 20
                kill_after = kill_draw.randint(3, max(4, 2 * remaining // (kills - result.kills + 1)))
            code, out, err, starts[run] = _run_target(
                config, source, workdir / f"run{run}", sandbox, kill_after
            )
            _check_output(run, code, out, err, sandbox, workdir, result.requests)
            if code == -9:
                result.kills += 1
            elif code == 0:
                state = json.loads(out.decode().strip().splitlines()[-1])
                _check_state_file(state, state_path, run, result.requests)
                if clean:
                    final_state = state
                else:
                    chaos_state, chaos_held = state, sandbox.held()
        result.faults = dict(chaos.report()["faults"])
        held = sandbox.held()
        if chaos_state is not None and final_state is not None:
            result.held_but_failed = _check_state(records, chaos_state, sandbox, chaos_held, result.chaos)
            result.held_but_failed_after_clean_run = _check_state(
                records, final_state, sandbox, held, result.final
            )
            if result.held_but_failed_after_clean_run:
                result.final.violate(
                    "held but failed, after a clean run", str(result.held_but_failed_after_clean_run)
                )
        check.check_in_flight(sandbox.attempts, result.requests)
        check.check_rate(starts, TARGET_SETTINGS["max_requests_per_second"], result.requests)
        result.requests.counts["peak arrivals in 1 s"] = check.arrival_peak(sandbox.attempts)
        check.check_no_older_resend(records, sandbox.attempts, confirmed_at_start, result.requests)
        result.requests.counts["requests"] = len(sandbox.attempts)
    result.seconds = time.monotonic() - started
    return result


def _check_state(
    records: list[InputRecord],
    state: dict[str, t.Any],
    sandbox: SoakSandbox,
    held: dict[tuple[str, str], tuple[str, int]],
    findings: Findings,
) -> int:
    """The checks of one state line against the store as it was then; returns how many records CBX1
    holds that the state calls failed."""
    entries = check.entries_by_record(records, state, findings)
    sent = {seq for attempt in sandbox.attempts for _, _, seq in attempt.items if seq is not None}
    check.check_successes(records, entries, held, sandbox.writes, findings)
    check.classify_failures(records, entries, sent, findings)
    return check.check_last_write(records, entries, held, findings)


def _confirmed(state_path: Path, by_id: dict[tuple[str, str], int]) -> set[int]:
    """The seqs of records the incremental state on disk (file and journal) holds a success for."""
    confirmed = set()
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            state = {}
        for stream, bookmarks in state.get("bookmarks", {}).items():
            for entry in bookmarks:
                if entry.get("success") is True and (stream, entry.get("externalId")) in by_id:
                    confirmed.add(by_id[(stream, entry["externalId"])])
    journal = state_path.with_name(state_path.name + ".journal")
    if journal.exists():
        for line in journal.read_text(errors="replace").splitlines():
            try:
                stream, _hash, success, _id, external_id, *_ = json.loads(line)
            except (ValueError, TypeError):
                continue  # a line torn by the kill
            if success is True and (stream, external_id) in by_id:
                confirmed.add(by_id[(stream, external_id)])
    return confirmed


def _run_target(
    config: Path, source: Path, prefix: Path, sandbox: SoakSandbox, kill_after: int | None
) -> tuple[int, bytes, bytes, list[float]]:
    """One run of the command on the whole input; killed with SIGKILL once the sandbox has seen
    `kill_after` of its requests. Returns the exit status (-9 when killed), stdout, stderr, and when
    the target started each request (noted by soak_probe)."""
    out_path, err_path = prefix.with_suffix(".out"), prefix.with_suffix(".err")
    starts_path = prefix.with_suffix(".starts")
    python_path = os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "SOAK_STARTS_FILE": str(starts_path)}
    first = len(sandbox.attempts)
    with source.open("rb") as stdin, out_path.open("wb") as stdout, err_path.open("wb") as stderr:
        process = subprocess.Popen(
            [COMMAND, "--config", str(config)], stdin=stdin, stdout=stdout, stderr=stderr, env=env
        )
        deadline = time.monotonic() + RUN_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            if kill_after is not None and len(sandbox.attempts) - first >= kill_after:
                process.kill()
                break
            time.sleep(0.005)
        hung = process.poll() is None and time.monotonic() >= deadline
        if hung:
            process.kill()
        code = HUNG if hung else process.wait()
        process.wait()
    starts = [float(line) for line in starts_path.read_text().split()] if starts_path.exists() else []
    return code, out_path.read_bytes(), err_path.read_bytes(), starts


def _check_output(
    run: int, code: int, out: bytes, err: bytes, sandbox: SoakSandbox, workdir: Path, findings: Findings
) -> None:
    """A run ends with 0, 1 (a stop with its reason), or our kill; no traceback; no secret anywhere."""
    if b"Traceback" in err:
        findings.violate("clean exits", f"run {run}: a traceback")
    if code == HUNG:
        findings.violate("clean exits", f"run {run}: still running after {RUN_SECONDS} s")
    elif code not in (0, 1, -9):
        findings.violate("clean exits", f"run {run}: exit status {code}")
    if code == 1:
        findings.counts["stops (exit 1)"] += 1
        reason = err.decode(errors="replace").strip().splitlines()[-1:]
        findings.counts[f"stop: {_stop_reason(reason[0] if reason else '')}"] += 1
    files = {f"run {run} stdout": out, f"run {run} stderr": err}
    for path in workdir.iterdir():
        if (
            path.is_file()
            and path.name not in ("config.json", "input.singer")
            and path.suffix not in (".out", ".err")
        ):
            files[path.name] = path.read_bytes()
    check.check_secrets(files, [ACCESS_KEY, *sandbox.issued], findings)


def _stop_reason(line: str) -> str:
    message = line.split("|")[-1].strip()
    return re.sub(r"\(.*", "", message)[:60].strip()


def _check_state_file(state: dict[str, t.Any], state_path: Path, run: int, findings: Findings) -> None:
    """At a clean exit, the incremental state file holds the state line."""
    try:
        on_disk = json.loads(state_path.read_text())
    except (OSError, ValueError) as error:
        findings.violate("state file = state line", f"run {run}: {error}")
        return
    if on_disk != state:
        findings.violate("state file = state line", f"run {run}: they differ")


def print_table(results: list[SeedResult]) -> None:
    """One column per seed: what was done, and what was found."""
    rows: list[tuple[str, list[t.Any]]] = [
        ("records", [r.records for r in results]),
        ("requests (all runs)", [r.requests.counts["requests"] for r in results]),
        ("kills (SIGKILL)", [r.kills for r in results]),
        ("runs (1 + resumes)", [r.runs for r in results]),
        ("stops with exit 1", [r.requests.counts["stops (exit 1)"] for r in results]),
    ]
    for kind in sorted({kind for r in results for kind in r.faults}):
        rows.append((f"fault injected: {kind}", [r.faults.get(kind, 0) for r in results]))
    rows.append(("faults injected, all", [sum(r.faults.values()) for r in results]))
    rows.append(("entries (last run with chaos)", [r.chaos.counts["entries"] for r in results]))
    for name in (*_contracts("records"), "successes verified", *_contracts("successes verified")):
        rows.append((name, [r.chaos.counts[name] for r in results]))
    for reason in sorted({reason for r in results for reason in r.chaos.failures}):
        rows.append((f"failed: {reason}", [r.chaos.failures.get(reason, 0) for r in results]))
    rows.append(("held by CBX1, state says failed", [r.held_but_failed for r in results]))
    rows.append(
        ("the same, after a run with chaos off", [r.held_but_failed_after_clean_run for r in results])
    )
    rows.append(("successes verified after it", [r.final.counts["successes verified"] for r in results]))
    rows.append(
        ("peak request starts in 1 s", [r.requests.counts["peak request starts in 1 s"] for r in results])
    )
    rows.append(("  arrivals at the sandbox", [r.requests.counts["peak arrivals in 1 s"] for r in results]))
    for name in sorted({name for r in results for f in _all(r) for name in f.violations}):
        rows.append(
            (f"VIOLATION {name}", [sum(len(f.violations.get(name, [])) for f in _all(r)) for r in results])
        )
    for part in ("flat", "envelope", "run"):
        label = f"violations, {part} records" if part != "run" else "violations, whole run"
        rows.append((label, [sum(f.by_contract[part] for f in _all(r)) for r in results]))
    rows.append(("violations", [violations(r) for r in results]))
    rows.append(("seconds", [f"{r.seconds:.0f}" for r in results]))
    width = max(len(label) for label, _ in rows)
    print(f"| {'seed':<{width}} | " + " | ".join(f"{r.seed:>7}" for r in results) + " |")
    print(f"|:{'-' * width}-|" + "|".join("-" * 8 + ":" for _ in results) + "|")
    for label, values in rows:
        print(f"| {label:<{width}} | " + " | ".join(f"{value!s:>7}" for value in values) + " |")


def _contracts(name: str) -> tuple[str, str]:
    return f"{name}, flat", f"{name}, envelope"


def _all(result: SeedResult) -> tuple[Findings, Findings, Findings]:
    return result.chaos, result.final, result.requests


def violations(result: SeedResult) -> int:
    return sum(f.total_violations() for f in _all(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per seed (default 100000)")
    parser.add_argument(
        "--seeds", default="1,2,3,4,5", help="comma-separated chaos seeds (default 1,2,3,4,5)"
    )
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per seed (default 5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument(
        "--keep", type=Path, help="keep each seed's files (input, state, logs) in this folder"
    )
    args = parser.parse_args(argv)
    results = []
    for seed in (int(text) for text in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"soak-{seed}-") as scratch:
            workdir = args.keep / f"seed-{seed}" if args.keep else Path(scratch)
            workdir.mkdir(parents=True, exist_ok=True)
            result = soak_seed(seed, args.records, args.kills, workdir)
        results.append(result)
        print(
            f"seed {seed}: {violations(result)} violations in {result.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        for findings in _all(result):
            for name, examples in findings.violations.items():
                print(f"  {name}: {examples[:3]}", file=sys.stderr)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([_as_json(r) for r in results], indent=1))
    return 1 if any(violations(r) for r in results) else 0


def _as_json(result: SeedResult) -> dict[str, t.Any]:
    return {
        "seed": result.seed,
        "records": result.records,
        "seconds": round(result.seconds, 1),
        "kills": result.kills,
        "runs": result.runs,
        "faults": result.faults,
        "held_but_failed": result.held_but_failed,
        "held_but_failed_after_clean_run": result.held_but_failed_after_clean_run,
        "counts": {**result.requests.counts, **result.chaos.counts},
        "failures": dict(result.chaos.failures),
        "violations": {name: examples for f in _all(result) for name, examples in f.violations.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
