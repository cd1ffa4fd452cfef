"""`cbx1-sandbox`: run the CBX1 API simulator on 127.0.0.1 until stopped."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
import typing as t
from pathlib import Path

from target_cbx1.incremental import write_atomically
from target_cbx1.sandbox import chaos, faults
from target_cbx1.sandbox.ingestion import DEFAULT_SOURCES, check_source_name
from target_cbx1.sandbox.server import DEFAULT_ACCESS_KEY, DEFAULT_ORG_ID, Sandbox


def lookup_field(text: str) -> tuple[str, str]:
    stream, separator, field_name = text.partition("=")
    if not separator or not stream or not field_name:
        raise argparse.ArgumentTypeError(f"expected STREAM=FIELD, as in leads=email, not {text!r}")
    return stream, field_name


def source_name(text: str) -> str:
    try:
        return check_source_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def chaos_rate(text: str) -> tuple[str, float]:
    try:
        return chaos.parse_rate(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="cbx1-sandbox",
        description="A local CBX1 API (auth, /bulk, /upsert, and the unified ingestion endpoint\n"
        "POST /api/t/v1/targets/integrations/{SOURCE}/{ACCOUNT|CONTACT}/records) for demos and tests.\n"
        "It prints its URL, then serves until interrupted.\n"
        "GET /_sandbox/records lists what /bulk and /upsert stored, GET /_sandbox/entities the\n"
        "entities /records stored; POST /_sandbox/faults with a JSON list of specs scripts more faults;\n"
        "GET /_sandbox/chaos reports what chaos mode (--chaos SEED) injected.",
        epilog=f"{faults.__doc__}\n{chaos.__doc__}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port; default 0)")
    cli.add_argument("--latency-ms", type=float, default=0, help="delay before every answer (default 0)")
    cli.add_argument(
        "--access-key", default=DEFAULT_ACCESS_KEY, help=f"access key it accepts ({DEFAULT_ACCESS_KEY})"
    )
    cli.add_argument(
        "--org-id", default=DEFAULT_ORG_ID, help=f"organisation id it accepts ({DEFAULT_ORG_ID})"
    )
    cli.add_argument("--token-max-age", type=int, default=3600, help="session token lifetime, seconds (3600)")
    cli.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="script a fault (see below)"
    )
    cli.add_argument(
        "--chaos", type=int, metavar="SEED", help="inject random faults, deterministic for SEED (see below)"
    )
    cli.add_argument(
        "--chaos-rate",
        action="append",
        type=chaos_rate,
        default=[],
        metavar="KIND=RATE",
        help="rate of one chaos fault kind, repeatable; given, the rates replace the defaults",
    )
    cli.add_argument(
        "--chaos-slow-seconds",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how late a chaos `slow` answer comes (default 2)",
    )
    cli.add_argument(
        "--lookup-field",
        action="append",
        type=lookup_field,
        default=[],
        metavar="STREAM=FIELD",
        help="serve another target besides accounts=domain and contacts=email",
    )
    cli.add_argument(
        "--source",
        action="append",
        type=source_name,
        metavar="SOURCE",
        help=f"a SOURCE /records ingests, repeatable; given, it replaces {', '.join(DEFAULT_SOURCES)}",
    )
    cli.add_argument(
        "--seed",
        type=int,
        help="seed for the order of /bulk and /records results (default: the --chaos SEED, else random)",
    )
    cli.add_argument(
        "--config-file",
        type=Path,
        metavar="PATH",
        help="where to write a target-cbx1 config for this sandbox (api_url, access_key, org_id), "
        "removed when the sandbox stops (default: config.json in a new temporary directory, never the "
        "working directory); its path is the second stdout line",
    )
    cli.add_argument("--exit-after", type=float, help="stop by itself after this many seconds")
    cli.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return cli


def main(argv: t.Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        scheduler = None
        if args.chaos is not None:
            rates = dict(args.chaos_rate) or dict(chaos.DEFAULT_RATES)
            scheduler = chaos.Chaos(args.chaos, rates, args.chaos_slow_seconds)
        sandbox = Sandbox(
            access_key=args.access_key,
            org_id=args.org_id,
            port=args.port,
            latency_ms=args.latency_ms,
            token_max_age=args.token_max_age,
            faults=args.fault,
            lookup_fields={"accounts": "domain", "contacts": "email", **dict(args.lookup_field)},
            seed=args.chaos if args.seed is None else args.seed,
            sources=args.source or DEFAULT_SOURCES,
            chaos=scheduler,
        )
    except (ValueError, OSError) as error:
        print(f"cbx1-sandbox: {error}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(sandbox)
        config = {"api_url": sandbox.url, "access_key": args.access_key, "org_id": args.org_id}
        try:
            config_file = write_target_config(config, args.config_file, cleanup)
        except OSError as error:
            print(f"cbx1-sandbox: cannot write the target-cbx1 config: {error}", file=sys.stderr)
            return 2
        print(f"CBX1 sandbox listening on {sandbox.url}", flush=True)
        print(f"target-cbx1 config for this sandbox: {config_file}", flush=True)
        stopped.wait(args.exit_after)
    stored = {stream: len(records) for stream, records in sandbox.store.records.items()}
    entities = {kind: len(by_key) for kind, by_key in sandbox.entity_store.entities.items()}
    summary = (
        f"CBX1 sandbox stopped after {len(sandbox.exchanges)} data requests; stored {stored}; "
        f"entities {entities}"
    )
    if sandbox.chaos is not None:
        injected = {kind: count for kind, count in sandbox.chaos.counts.items() if count}
        summary += f"; chaos faults {injected}"
    print(summary, file=sys.stderr)
    return 0


def write_target_config(config: dict[str, str], chosen: Path | None, cleanup: contextlib.ExitStack) -> Path:
    """Write target-cbx1's config for this sandbox to `chosen`, else to config.json in a new temporary
    directory, and have `cleanup` remove it when the sandbox stops.

    Never the working directory unless asked: the file holds the access key, and target-cbx1 writes
    the session token it gets back into it. A new file is readable by its owner only.
    """
    if chosen is None:
        directory = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="cbx1-sandbox-"))
        path = Path(directory) / "config.json"
    else:
        path = chosen
        path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda out: json.dump(config, out, indent=2))
    if chosen is not None:
        cleanup.callback(path.unlink, missing_ok=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
