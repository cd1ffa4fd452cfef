"""Reads Singer lines: numbered for errors, repaired where a record can be saved, bad records named."""

from __future__ import annotations

import collections
import decimal
import gzip
import json
import os
import re
import select
import stat
import sys
import typing as t

from singer_sdk.exceptions import (
    InvalidJSONSchema,
    MapExpressionError,
    MissingKeyPropertiesError,
    RecordsWithoutSchemaException,
    StreamMapConfigError,
)
from singer_sdk.helpers._batch import StorageTarget
from singer_sdk.singerlib.encoding import SimpleSingerReader
from singer_sdk.singerlib.exceptions import InvalidInputLine, SingerReadError

from target_cbx1 import jsonio
from target_cbx1.repair import map_texts, without_lone_surrogates

# Errors that mean the input (or a stream map applied to it) is wrong: the run stops, naming the line.
INPUT_ERRORS = (
    SingerReadError,
    RecordsWithoutSchemaException,
    MissingKeyPropertiesError,
    InvalidJSONSchema,
    StreamMapConfigError,
    MapExpressionError,
)
BOM = "\ufeff"
MAX_DEPTH = 200  # levels of nesting a line may hold; a deeper record fails, on every Python version
REPLACEMENT = "\ufffd"
_STREAM = re.compile(rb'"stream"\s*:\s*"((?:[^"\\]|\\.){1,200})"')
READ_BYTES = 1 << 16  # what one read of a pipe takes at most
IDLE_SECONDS = 0.5  # while a pipe stays silent this long, the reader's `idle` runs


class NumberedLineReader(SimpleSingerReader):
    """The SDK's line reader, plus line numbers in errors, repairs, and a check before each line.

    A line whose bytes are not UTF-8, or whose strings hold lone surrogates, is repaired: the bad
    characters become U+FFFD and the record is sent (`repairs` counts them per stream). A RECORD
    that cannot be sent as it is (NaN or Infinity, nesting too deep to read) reaches its callback
    with `problem` saying why, so that only that record fails.
    """

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.before_line: t.Callable[[], None] = lambda: None
        self.problem: str | None = None
        self.raw_line = b""
        self.repairs: collections.Counter[str] = collections.Counter()
        self.idle: t.Callable[[], None] | None = None  # runs while a silent tap sends no line

    def process_lines(
        self, file_input: t.IO[str] | None, callbacks: dict[str, t.Callable[[dict], None]]
    ) -> t.Counter[str]:
        stats: t.Counter[str] = collections.Counter()
        for number, line in enumerate(lines_of(file_input, self.idle), start=1):
            self.line_number = number
            self.before_line()
            if not line.strip():
                continue
            self.raw_line = line
            message = self.parse(line.removeprefix(BOM.encode()) if number == 1 else line)
            kind = message.get("type")
            callback = callbacks.get(kind) if isinstance(kind, str) else None
            if callback is None or not isinstance(kind, str):
                raise InvalidInputLine(
                    f"line {self.line_number}: not a Singer message (type {kind!r}; expected "
                    "SCHEMA, RECORD, STATE, ACTIVATE_VERSION or BATCH)"
                )
            try:
                callback(message)
            except INPUT_ERRORS as exc:
                raise type(exc)(f"line {self.line_number}: {exc}") from exc
            stats[kind] += 1
        return stats

    def parse(self, line: bytes) -> dict:
        """The Singer message on a line. A RECORD that cannot be sent as it is (NaN, nested too
        deeply) comes back with `problem` saying why; any other unreadable line raises InvalidInputLine.
        """
        try:  # clean JSON, the common case, takes one C call
            message = jsonio.decode(line)
        except (jsonio.DecodeError, RecursionError):
            message = None
        if isinstance(message, dict) and not nested_too_deeply(line, message):
            self.problem = None
            return message
        where = f"line {self.line_number}"
        try:
            reading = read_json(line, where)
        except ValueError as exc:
            raise InvalidInputLine(f"{where} is not valid JSON ({exc}); it starts {shown(line)}") from None
        message = reading.value
        if message is None:  # nested too deeply to read: a RECORD whose stream can be told fails alone
            message = self._record_of_its_stream(line, where)
        elif not isinstance(message, dict):
            raise InvalidInputLine(f"{where} is JSON but not an object; it starts {shown(line)}")
        if reading.problem is not None and message.get("type") != "RECORD":
            raise InvalidInputLine(reading.problem)
        self.problem = (
            reading.problem and f"{reading.problem}, so the record was not sent; fix the tap or the ETL"
        )
        if reading.repaired:
            self.repairs[str(message.get("stream"))] += 1
        return message

    def parse_record(self, line: bytes, stream: str, where: str) -> tuple[t.Any, str | None]:
        """(record, problem) of one line of a BATCH file: a line that cannot be sent fails as its record."""
        try:
            reading = read_json(line, where)
        except ValueError as exc:
            return line.decode("utf-8", "replace"), f"{where} is not valid JSON ({exc}), so it was not sent"
        if reading.repaired:
            self.repairs[stream] += 1
        return reading.value, reading.problem and f"{reading.problem}, so the record was not sent"

    def _record_of_its_stream(self, line: bytes, where: str) -> dict:
        stream = _STREAM.search(line)
        if stream is None or b'"RECORD"' not in line:
            raise InvalidInputLine(f"{where} is nested too deeply to read; it starts {shown(line)}")
        return {"type": "RECORD", "stream": json.loads(b'"' + stream.group(1) + b'"'), "record": None}


def nested_too_deeply(line: bytes, value: t.Any) -> bool:
    """Whether a line's JSON nests deeper than MAX_DEPTH; only a line with that many brackets is walked."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    levels = [(value, 1)]
    while levels:
        item, level = levels.pop()
        if not isinstance(item, (dict, list)):
            continue
        if level > MAX_DEPTH:
            return True
        levels.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


class Reading(t.NamedTuple):
    """A line read as JSON: its value (None when nested too deeply to read), why the record it holds
    cannot be sent as it is, and whether bad characters in it were replaced.
    """

    value: t.Any
    problem: str | None = None
    repaired: bool = False


def read_json(line: bytes, where: str) -> Reading:
    """A line's JSON, fast for clean input; leniently for bytes that are not UTF-8, lone surrogates,
    NaN/Infinity and deep nesting. Raises ValueError for a line that is not JSON at all.
    """
    too_deep = Reading(None, f"{where}: the record is nested too deeply to read (over {MAX_DEPTH} levels)")
    try:
        value = jsonio.decode(line)
        return too_deep if nested_too_deeply(line, value) else Reading(value)
    except (jsonio.DecodeError, RecursionError):
        pass
    text = line.decode("utf-8", "replace")
    replaced = text.count(REPLACEMENT) > line.count(REPLACEMENT.encode())
    constants: list[str] = []
    try:
        value = json.loads(text, parse_float=decimal.Decimal, parse_constant=_remember(constants))
        value, surrogates = map_texts(value, without_lone_surrogates)
    except RecursionError:
        return too_deep._replace(repaired=replaced)
    if nested_too_deeply(line, value):
        return too_deep._replace(repaired=replaced)
    problem = None
    if constants:
        problem = f"{where}: the record holds {', '.join(sorted(set(constants)))}, which JSON does not allow"
    return Reading(value, problem, replaced or surrogates > 0)


def lines_of(file_input: t.IO[str] | None, idle: t.Callable[[], None] | None = None) -> t.Iterator[bytes]:
    """The input's lines as bytes: stdin and files are read as bytes, so bad UTF-8 can be repaired.

    From a pipe (a tap writing to stdin), `idle` runs every IDLE_SECONDS while no line comes.
    """
    source: t.Any = file_input if file_input is not None else sys.stdin
    buffer = getattr(source, "buffer", None)
    if buffer is not None:
        fd = _pipe_of(buffer) if idle is not None else None
        if fd is not None and idle is not None:
            yield from pipe_lines(fd, idle)
        else:
            yield from buffer
        return
    for line in source:
        yield line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")


def _pipe_of(stream: t.Any) -> int | None:
    """The file descriptor of a pipe or socket that select() can wait on, else None (a file never
    keeps the reader waiting; Windows cannot select on pipes)."""
    if sys.platform == "win32":
        return None
    try:
        fd = int(stream.fileno())
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    return fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def pipe_lines(fd: int, idle: t.Callable[[], None], idle_seconds: float = IDLE_SECONDS) -> t.Iterator[bytes]:
    """The lines of a pipe as they come, each with its newline; `idle()` runs while none comes."""
    partial: list[bytes] = []  # the start of a line whose end has not come yet
    while True:
        readable, _, _ = select.select([fd], [], [], idle_seconds)
        if not readable:
            idle()
            continue
        chunk = os.read(fd, READ_BYTES)
        if not chunk:
            break
        lines = chunk.split(b"\n")
        last = lines.pop()
        if partial and lines:
            lines[0] = b"".join(partial) + lines[0]
            partial = []
        for line in lines:
            yield line + b"\n"
        if last:
            partial.append(last)
    if partial:
        yield b"".join(partial)


def shown(line: bytes) -> str:
    return repr(line[:60].decode("utf-8", "replace"))


def _remember(constants: list[str]) -> t.Callable[[str], None]:
    def constant(name: str) -> None:
        constants.append(name)

    return constant


def batch_file_lines(url: str, compression: str | None) -> t.Iterator[bytes]:
    """The lines of one BATCH manifest file (file:// or another fsspec URL), plain or gzip.

    Raises InvalidInputLine when the file cannot be read.
    """
    try:
        head, tail = StorageTarget.split_url(url)
        with StorageTarget.from_url(head).open(tail, mode="rb") as file:
            if compression == "gzip":
                with gzip.open(file) as unpacked:
                    yield from unpacked
            else:
                yield from file
    except (OSError, EOFError, ValueError) as exc:
        raise InvalidInputLine(f"the BATCH file {url} cannot be read ({exc})") from None
