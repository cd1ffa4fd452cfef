"""TargetCBX1: settings, sink routing, record intake and the HotGlue state line."""

from __future__ import annotations

import copy
import gc
import json
import os
import signal
import sys
import threading
import time
import typing as t
from pathlib import Path

import click
import requests
from singer_sdk.exceptions import (
    ConfigValidationError,
    FatalAPIError,
    InvalidJSONSchema,
    StreamMapConfigError,
)
from singer_sdk.helpers.capabilities import TARGET_VALIDATE_RECORDS_CONFIG
from singer_sdk.mapper import RemoveRecordTransform
from singer_sdk.plugin_base import _ConfigInput
from singer_sdk.singerlib.exceptions import InvalidInputLine
from singer_sdk.target_base import Target

from target_cbx1.client import ApiSink
from target_cbx1.context import RunContext
from target_cbx1.dryrun import DryRun
from target_cbx1.errors import StopRequested, TransientError
from target_cbx1.incremental import IncrementalStateFile, state_file_path, write_atomically
from target_cbx1.jsonio import json_kind
from target_cbx1.ledger import StateLedger
from target_cbx1.progress import Progress
from target_cbx1.reader import INPUT_ERRORS, NumberedLineReader, batch_file_lines, shown
from target_cbx1.redaction import install_log_masking
from target_cbx1.session import (
    ApiSession,
    certificate_message,
    describe_network_error,
    unreachable_message,
)
from target_cbx1.settings import (
    CONFIG_SCHEMA,
    Settings,
    environment_values,
    singer_state_under_meltano,
    unknown_settings,
)
from target_cbx1.sinks import BatchSink, RecordSink
from target_cbx1.streams import StreamRouter
from target_cbx1.tapstate import TapStateForwarder
from target_cbx1.transport import HostNotFoundError

if t.TYPE_CHECKING:
    from types import FrameType

    from singer_sdk.sinks import Sink

CONFIG_PATHS = "target_cbx1.config_paths"
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
STOP_GRACE_SECONDS = 5.0  # how long requests in flight may take to finish after a stop signal
PARTIAL_BATCH = {"partial": True}  # BatchSink.process_batch: full chunks only, the input goes on
WAIT_CHECK_SECONDS = 0.5  # how often input lines look for queues that waited long enough


class TargetCBX1(Target):
    """Singer target that upserts CRM accounts and contacts into CBX1."""

    name = "target-cbx1"
    config_jsonschema = CONFIG_SCHEMA
    default_sink_class = BatchSink
    message_reader_class = NumberedLineReader

    def __init__(
        self,
        *,
        config: dict | None = None,
        parse_env_config: bool = False,
        validate_config: bool = True,
        setup_mapper: bool = True,
        message_reader: t.Any = None,
        config_path: Path | None = None,
    ) -> None:
        """The SDK's constructor arguments; `validate_config` is accepted but the config is always
        checked (the target cannot run on one it has not read). `config_path`: the file a refreshed
        token is written back into.
        """
        install_log_masking()
        schema = copy.deepcopy(CONFIG_SCHEMA)
        self.append_builtin_config(schema)
        config = dict(config or {})
        problems: list[str] = []
        if parse_env_config:  # TARGET_CBX1_* variables: read here, so that a bad one is named
            from_environment, problems = environment_values(os.environ, schema)
            config |= from_environment
        # Checked before the SDK sets up stream maps from the config, listing every problem at once.
        unknown = unknown_settings(config, schema)
        if unknown:
            self.logger.warning("%s", unknown)
        self.settings = Settings.from_config(config, builtin_schema=schema, earlier_problems=problems)
        super().__init__(
            config=config,
            parse_env_config=False,  # read above
            validate_config=False,  # done above
            setup_mapper=setup_mapper,
            message_reader=message_reader,
        )
        if singer_state_under_meltano(config, os.environ):
            self.logger.info(
                "Running under Meltano: state_output singer (the tap's STATE is forwarded once its records "
                "are confirmed); set state_output to hotglue to print HotGlue's state line instead"
            )
        self.max_parallelism = 1  # streams are drained one after the other, in a known order
        self.ledger = StateLedger()
        self._config_path = config_path
        self.session = ApiSession(self.settings, on_new_token=self._write_back_token)
        self._finishing = False
        self._next_wait_check = 0.0
        self._versions_logged: set[str] = set()  # streams whose ACTIVATE_VERSION was logged
        self.reader = t.cast("NumberedLineReader", self.message_reader)
        path = None if self.settings.dry_run else state_file_path(self.settings.incremental_state_path)
        self.incremental = IncrementalStateFile(path) if path else None
        results = self.settings.results_path
        self.results = IncrementalStateFile(Path(results)) if results else None
        self._check_state_files()
        self.dry_run = DryRun() if self.settings.dry_run else None
        singer_mode = self.settings.state_output == "singer" and not self.settings.dry_run
        self.tap_state = TapStateForwarder(self.ledger, self._records_left_unwritten) if singer_mode else None
        self.progress = Progress(self.settings.progress_interval_seconds, self.ledger)
        self.run_context = RunContext(
            self.settings,
            self.session,
            self.ledger,
            StreamRouter(self.settings),
            self.dry_run,
            self.checkpoint,
        )
        self.reader.before_line = self._before_line
        self.reader.idle = self._while_the_tap_is_silent
        self._resume()
        if self.incremental is not None:
            self.incremental.start(self.ledger)

    def _before_line(self) -> None:
        """Before each line: stop with the error that stopped a request, or for a signal or an outage."""
        self.run_context.requests.raise_error()
        self.session.raise_if_stopping()

    def _while_the_tap_is_silent(self) -> None:
        """While no line comes: stop as before a line would, and send the queues that waited long enough."""
        self._before_line()
        self._send_what_waited()

    def _records_left_unwritten(self) -> bool:
        """Whether a request failed after its retries, or a stream stopped: the tap must read them again."""
        return self.session.gave_up > 0 or bool(self.run_context.missing_endpoints)

    def _check_state_files(self) -> None:
        """Stop at once, as a config problem, when a state file cannot be written."""
        files = {"incremental_state_path": self.incremental, "results_path": self.results}
        problems = []
        for setting, state_file in files.items():
            if state_file is None:
                continue
            try:
                state_file.check_writable()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                fix = "fix the path or its permissions"
                problems.append(f"{setting}: {state_file.path} cannot be written ({reason}); {fix}")
        if problems:
            raise ConfigValidationError("Invalid target-cbx1 config", errors=problems)

    def _resume(self) -> None:
        """Seed the state from the incremental file an interrupted run of this job left."""
        earlier = self.incremental.load() if self.incremental else None
        if earlier is not None and self.incremental is not None:
            count = self.ledger.seed(earlier)
            self.logger.info(
                "Resuming from %s: %d entries of an earlier run; records it wrote are not sent again",
                self.incremental.path,
                count,
            )

    # Routing

    def get_sink_class(self, stream_name: str) -> type[Sink]:
        return BatchSink if self.settings.process_as_batch else RecordSink

    # Message handling

    def _process_record_message(self, message_dict: dict) -> None:
        """Hand each record to its sink as received: no timestamp rewriting, bad records fail alone."""
        self._assert_line_requires(message_dict, requires={"stream", "record"})
        received = message_dict["record"]
        problem = self.reader.problem
        if problem is None and not isinstance(received, dict):
            problem = not_an_object(f"line {self.reader.line_number}: the RECORD's record", received)
        self._take_record(message_dict["stream"], received, problem, self.reader.raw_line)

    def _process_batch_message(self, message_dict: dict) -> None:
        """A BATCH message: each record of its JSONL files (plain or gzip) is taken as a RECORD is,
        read one line at a time. A line that is not a JSON object fails as that record.
        """
        self._assert_line_requires(message_dict, requires={"stream", "encoding", "manifest"})
        encoding = message_dict["encoding"] if isinstance(message_dict["encoding"], dict) else {}
        if encoding.get("format") != "jsonl":
            raise InvalidInputLine(
                f"BATCH files of format {encoding.get('format')!r} cannot be read: only jsonl (plain or "
                "gzip) is; have the tap write jsonl batches, or plain RECORD messages"
            )
        for url in message_dict["manifest"]:
            for number, line in enumerate(batch_file_lines(str(url), encoding.get("compression")), start=1):
                if not line.strip():
                    continue
                where = f"{url} line {number}"
                received, problem = self.reader.parse_record(line, message_dict["stream"], where)
                problem = problem or not_an_object(where, received)
                self._take_record(message_dict["stream"], received, problem, line)

    def _take_record(self, stream_name: str, received: t.Any, problem: str | None, line: bytes) -> None:
        """One record as received, to each sink its stream maps to; with a `problem`, it fails there
        (entered by the hash of its `line`, since it may not be JSON a hash can be taken of).
        """
        if stream_name not in self.mapper.stream_maps:
            self._assert_sink_exists(stream_name)
        for stream_map in self.mapper.stream_maps[stream_name]:
            if problem is not None:  # the record cannot be mapped or sent: it fails in every sink
                if isinstance(stream_map, RemoveRecordTransform):
                    continue  # a stream the stream maps drop: none of its records get an entry
                self._assert_sink_exists(stream_map.stream_alias)
                t.cast("ApiSink", self.get_sink(stream_map.stream_alias)).refuse(received, problem, line)
                continue
            record = stream_map.transform(copy.copy(received))
            if record is None:
                continue
            self._assert_sink_exists(stream_map.stream_alias)
            sink = t.cast("BatchSink | RecordSink", self.get_sink(stream_map.stream_alias, record=record))
            sink.accept(received, record)
            if sink.is_full:  # only a BatchSink fills: its full chunks go, the rest stays queued
                sink.process_batch(PARTIAL_BATCH)
        self._send_what_waited()
        self._handle_max_record_age()
        self.progress.tick()

    def _send_what_waited(self) -> None:
        """Send the queues whose records waited max_chunk_wait_seconds for their chunk to fill
        (looked at twice a second at most: at input lines, and while a tap's pipe is silent)."""
        now = time.monotonic()
        if now < self._next_wait_check:
            return
        self._next_wait_check = now + WAIT_CHECK_SECONDS
        for sink in self.api_sinks():
            if isinstance(sink, BatchSink) and sink.waited_longer_than(
                self.settings.max_chunk_wait_seconds, now
            ):
                self.drain_one(sink)

    def _process_schema_message(self, message_dict: dict) -> None:
        """Send a stream's queued records before its schema changes, so upserts stay in order.

        Raises InvalidJSONSchema for a schema without properties.
        """
        self._assert_line_requires(message_dict, requires={"stream", "schema"})
        stream, schema = message_dict["stream"], message_dict["schema"]
        if not isinstance(schema, dict) or "properties" not in schema:
            raise InvalidJSONSchema(
                f"The SCHEMA message for stream {stream!r} has no 'properties': the target needs the "
                "stream's fields and their types. Fix the schema the tap sends for this stream."
            )
        stream_maps = self.mapper.stream_maps.get(stream, [])
        for stream_map in stream_maps:
            schema_changed = stream_map.raw_schema != schema
            keys_changed = stream_map.raw_key_properties != message_dict.get("key_properties")
            sink = self._sinks_active.get(stream_map.stream_alias)
            if (schema_changed or keys_changed) and sink is not None:
                self.drain_one(sink)
                requests = t.cast("ApiSink", sink).requests
                requests.wait()
                requests.close()  # the sink is replaced: its threads end now
        try:
            super()._process_schema_message(message_dict)
        except NotImplementedError as exc:  # the SDK's word for a stream map option it does not know
            raise StreamMapConfigError(
                f"stream_maps for {stream!r}: {exc}; fix stream_maps in the config"
            ) from None

    def _process_state_message(self, message_dict: dict) -> None:
        """Singer mode: hold the STATE until every record before it is decided, then forward it. The
        queues are not drained for it, so requests stay full; max_chunk_wait_seconds bounds the wait.

        HotGlue mode: the target's own state line is the output, so tap STATE is not forwarded.
        """
        self._assert_line_requires(message_dict, requires={"value"})
        if self.tap_state is not None:
            self.tap_state.received(message_dict["value"])
            self._send_what_waited()

    def _process_activate_version_message(self, message_dict: dict) -> None:
        """Accepted and not applied: activating a full-table version deletes the records of older
        versions, and CBX1 has no delete. Logged once a stream; a message without a stream name or a
        version is bad input.
        """
        stream, version = message_dict.get("stream"), message_dict.get("version")
        if not isinstance(stream, str) or not stream or version is None:
            raise InvalidInputLine(
                "an ACTIVATE_VERSION message needs a stream name and a version, as in "
                '{"type": "ACTIVATE_VERSION", "stream": "accounts", "version": 1700000000}; this one '
                f"starts {shown(self.reader.raw_line)}: fix the tap"
            )
        if stream not in self._versions_logged:
            self._versions_logged.add(stream)
            self.logger.info(
                "Stream %r: ACTIVATE_VERSION (full-table version %s) is not applied: CBX1 has no delete, "
                "so records of older versions stay in CBX1",
                stream,
                version,
            )

    def process_endofpipe(self) -> None:
        """Send what is queued; each sink's clean-up waits for its requests; then write the state."""
        super().process_endofpipe()
        self.write_state()

    def api_sinks(self) -> list[ApiSink]:
        """The active sinks; every sink of this target is an ApiSink."""
        return t.cast("list[ApiSink]", list(self._sinks_active.values()))

    def _setup_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), self._handle_termination)

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT/SIGUSR1: read no more and send nothing new; `invoke` writes the state."""
        if self._finishing:
            return
        name = signal.Signals(signum).name
        self.logger.warning("Received %s: stopping; only confirmed outcomes go into the state", name)
        self.session.stop(name)
        raise StopRequested(name)

    def settle(self, stop_reason: str | None, timeout: float | None = None) -> None:
        """Wait for the requests handed to the pools, at most `timeout` seconds (None: all they need).

        With a `stop_reason`, requests not yet started are dropped and retries end.
        """
        self._finishing = True
        if stop_reason is not None:
            self.session.stop(stop_reason)
        deadline = None if timeout is None else time.monotonic() + timeout
        for sink in self.api_sinks():
            if not sink.requests.settle(deadline):
                self.logger.warning("Requests still in flight after %.0f s were abandoned", timeout or 0)
                return

    def send_what_was_read(self) -> None:
        """After a bad line: the records read before it are still sent, and their answers awaited.

        A signal meanwhile raises StopRequested, to stop as signals do.
        """
        try:
            for sink in self.api_sinks():
                self.drain_one(sink)
            for sink in self.api_sinks():
                sink.requests.wait()
        except FatalAPIError as exc:
            self.logger.error("While sending the records read before the bad line: %s", exc)
            self.settle(type(exc).__name__, STOP_GRACE_SECONDS)

    def stop_for(self, stop: StopRequested) -> t.NoReturn:
        """A signal stopped the run: settle what is in flight, write the state, exit 128 + its number."""
        self.settle(stop.signal_name, STOP_GRACE_SECONDS)
        self.write_state()
        self.logger.warning(
            "Stopped by %s. The state holds every confirmed outcome; records not yet sent have no "
            "entry, and the next run sends them.",
            stop.signal_name,
        )
        sys.exit(exit_status_after(stop.signal_name))

    def checkpoint(self) -> None:
        """After each request: forward tap STATEs now covered (the incremental file keeps itself current)."""
        if self.tap_state is not None:
            self.tap_state.forward_ready()

    def write_state(self) -> None:
        """The run's output: summary on stderr, state on stdout (HotGlue line or tap STATE), files."""
        self._finishing = True
        for stream, count in sorted(self.reader.repairs.items()):
            self.logger.warning(
                "Stream %r: %d records held bytes that are not UTF-8 or lone surrogates; those characters "
                "were replaced with U+FFFD and the records sent",
                stream,
                count,
            )
        for stream, stats in sorted(self.run_context.all_stats().items()):
            if stats.repaired:
                self.logger.info(
                    "Stream %r: repair_text fixed mojibake in %d text values", stream, stats.repaired
                )
        if self.dry_run is not None:
            self.dry_run.print_summary(self.ledger)
        else:
            self.progress.log_summary(self.run_context.all_stats())
        if self.settings.state_output == "hotglue":
            self.ledger.write(sys.stdout)
            sys.stdout.flush()
        elif self.tap_state is not None:
            self.tap_state.forward_ready()
        for state_file in (self.incremental, self.results):
            if state_file is not None:
                state_file.save(self.ledger)
        if self.incremental is not None:
            self.logger.info(
                "Incremental state %s: %d bytes written in all, for a final file of %d bytes",
                self.incremental.path,
                self.incremental.bytes_written,
                self.incremental.path.stat().st_size if self.incremental.path.exists() else 0,
            )

    # Config

    def _write_back_token(self, token: str, expires_at: float | None) -> None:
        """Store a new session token in the config file it came from, as HotGlue expects."""
        if self._config_path is None:
            return
        try:
            config = json.loads(self._config_path.read_text())
            hotglue_style = "access_token" not in config and ("AccessToken" in config or "Code" in config)
            config["AccessToken" if hotglue_style else "access_token"] = token
            if expires_at is None:  # CBX1 gave no usable maxAge: the token is kept until refused
                config.pop("expires_in", None)
            else:
                config["expires_in"] = int(expires_at)
            write_atomically(self._config_path, lambda out: json.dump(config, out, indent=2))
        except (OSError, ValueError) as exc:
            self.logger.warning(
                "Could not save the new session token into %s (%s); the next run will fetch another",
                self._config_path,
                type(exc).__name__,
            )

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """Nothing more to check: Settings already checked the whole config, every problem at once."""
        return []

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """Offer only the built-in settings this target honours (validate_records, stream maps)."""
        for name, spec in TARGET_VALIDATE_RECORDS_CONFIG["properties"].items():
            config_jsonschema["properties"].setdefault(name, spec)
        super(Target, cls).append_builtin_config(config_jsonschema)

    @classmethod
    def cb_config(cls, ctx: click.Context, param: click.Option, value: tuple[str, ...]) -> _ConfigInput:
        """Read the config files (or ENV), remembering their paths for the token write-back.

        A file that is missing, unreadable, not JSON or not an object stops the run with an ERROR
        line for each such file, and exit status 2.
        """
        paths = [path for path in value if path != "ENV"]
        ctx.meta[CONFIG_PATHS] = paths
        config: dict[str, t.Any] = {}
        problems = []
        for path in paths:
            try:
                content = json.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                problems.append(f"config file {path} does not exist")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"config file {path} cannot be read ({type(exc).__name__})")
            except json.JSONDecodeError as exc:
                problems.append(f"config file {path} is not valid JSON ({exc.msg} at line {exc.lineno})")
            else:
                if isinstance(content, dict):
                    config |= content
                else:
                    problems.append(
                        f"config file {path} holds a JSON {type(content).__name__}, not an object"
                    )
        if problems:
            cls.exit_for_config([f"{problem}; fix the file given with --config" for problem in problems])
        return _ConfigInput(config=config, parse_env="ENV" in value)

    @classmethod
    def exit_for_config(cls, problems: list[str]) -> t.NoReturn:
        """Stop with exit status 2 and an ERROR line for each config problem, in order; with several,
        a last line counts them, since a log viewer may show only the last line.
        """
        for problem in problems:
            cls.logger.error("Invalid target-cbx1 config: %s", problem)
        if len(problems) > 1:
            count = f"{len(problems)} problems, each on its own line above; fix them all, then rerun"
            cls.logger.error("Invalid target-cbx1 config: %s", count)
        sys.exit(2)

    @classmethod
    def get_singer_command(cls) -> click.Command:
        """The SDK's command, with --check."""
        command = super().get_singer_command()
        command.params.append(
            click.Option(
                ["--check"],
                is_flag=True,
                help="Check api_url, access_key and org_id by fetching a session token; read no input.",
            )
        )
        return command

    def check_connection(self) -> t.NoReturn:
        """`--check`: fetch a token and say which organisation it is for (exit 0), or why not (exit 1)."""
        try:
            self.session.auth.fetch()
        except requests.exceptions.SSLError as exc:
            self.logger.error("%s", certificate_message(self.session.base_url, exc))
        except requests.ConnectionError as exc:
            detail = describe_network_error(exc, self.settings.timeout)
            no_such_host = isinstance(exc, HostNotFoundError)
            self.logger.error(
                "%s", unreachable_message(self.session.base_url, detail, 1, no_such_host=no_such_host)
            )
        except (requests.RequestException, TransientError, FatalAPIError) as exc:
            self.logger.error("Check failed: %s", exc)
        else:
            self.logger.info(
                "Check passed: %s issued a session token for org_id %r; nothing was sent",
                self.session.base_url,
                self.settings.org_id,
            )
            sys.exit(0)
        sys.exit(1)

    @classmethod
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: _ConfigInput | None = None,
        file_input: t.IO[str] | None = None,
        check: bool = False,
    ) -> None:
        """Run the target (or `--check`); if it stops on an error, the state of what was written is
        printed first."""
        super(Target, cls).invoke(about=about, about_format=about_format)
        cls.print_version(print_fn=cls.logger.info)
        context = click.get_current_context(silent=True)
        paths = context.meta.get(CONFIG_PATHS, []) if context else []
        try:
            target = cls(
                config=config.config if config else {},
                parse_env_config=config.parse_env if config else False,
                config_path=Path(paths[-1]) if paths and not check else None,
            )
        except ConfigValidationError as exc:
            cls.exit_for_config(exc.errors or [str(exc)])
        except StreamMapConfigError as exc:
            cls.exit_for_config([f"stream_maps: {exc}"])
        if check:
            target.check_connection()
        # What start-up built lives as long as the run: the collector need not look at it again
        # each time it scans the records' objects (a fifth of the CPU of a run without HTTP).
        gc.freeze()
        try:
            target.listen(file_input)
            if target.run_context.missing_endpoints:
                cls.logger.error("%s", "; ".join(target.run_context.missing_endpoints.values()))
                sys.exit(1)
        except StopRequested as stop:
            target.stop_for(stop)
        except FatalAPIError as exc:
            target.settle(type(exc).__name__, STOP_GRACE_SECONDS)
            target.write_state()
            cls.logger.error("%s", exc)
            sys.exit(1)
        except INPUT_ERRORS as exc:
            try:
                target.send_what_was_read()
            except StopRequested as stop:
                target.stop_for(stop)
            target.write_state()
            cls.logger.error("%s", exc)
            sys.exit(1)
        except Exception:
            target.write_state()
            raise


def exit_status_after(stop_reason: str) -> int:
    """128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as shells report a job a signal
    stopped, so that schedulers see it as not successful; 1 for a stop that was not a signal.
    """
    try:
        return 128 + signal.Signals[stop_reason].value
    except KeyError:
        return 1


def not_an_object(where: str, received: t.Any) -> str | None:
    """The failure of a record that is not a JSON object; None for one that is."""
    if isinstance(received, dict):
        return None
    return f"{where} is {json_kind(received)}, not an object, so it was not sent"
