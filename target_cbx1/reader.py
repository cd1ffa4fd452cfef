"""Reads Singer lines: numbered for errors, repaired where a record can be saved, bad records named."""

from __future__ import annotations

import collections
import decimal
import gzip
import json
import re
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
REPLACEMENT = "\ufffd"
_STREAM = re.compile(rb'"stream"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


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
        self.repairs: collections.Counter[str] = collections.Counter()

    def process_lines(
        self, file_input: t.IO[str] | None, callbacks: dict[str, t.Callable[[dict], None]]
    ) -> t.Counter[str]:
        stats: t.Counter[str] = collections.Counter()
        for number, line in enumerate(lines_of(file_input), start=1):
            self.line_number = number
            self.before_line()
            if not line.strip():
                continue
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
        """The message on a line; fast for clean JSON, lenient for a line that can still be saved."""
        self.problem = None
        try:
            message = jsonio.decode(line)
        except (jsonio.DecodeError, RecursionError):
            message = self._parse_leniently(line)
        if not isinstance(message, dict):
            raise InvalidInputLine(
                f"line {self.line_number} is JSON but not an object; it starts {shown(line)}"
            )
        return message

    def deserialize_json(self, line: str) -> dict:
        """The SDK's hook, for callers that hand over text."""
        return self.parse(line.encode("utf-8", "surrogatepass"))

    def _parse_leniently(self, line: bytes) -> t.Any:
        text = line.decode("utf-8", "replace")
        replaced = text.count(REPLACEMENT) - line.count(REPLACEMENT.encode())
        constants: list[str] = []
        try:
            message = json.loads(text, parse_float=decimal.Decimal, parse_constant=_remember(constants))
        except RecursionError:
            return self._too_deep(line)
        except ValueError as exc:
            raise InvalidInputLine(
                f"line {self.line_number} is not valid JSON ({exc}); it starts {shown(line)}"
            ) from None
        message, surrogates = _without_lone_surrogates(message)
        if isinstance(message, dict) and (replaced or surrogates):
            self.repairs[str(message.get("stream"))] += 1
        if constants and isinstance(message, dict) and message.get("type") == "RECORD":
            self.problem = (
                f"line {self.line_number}: the record holds {', '.join(sorted(set(constants)))}, which JSON "
                "does not allow and CBX1 cannot store, so it was not sent; fix the tap or the ETL"
            )
        elif constants:
            raise InvalidInputLine(f"line {self.line_number} holds {constants[0]}, which JSON does not allow")
        return message

    def _too_deep(self, line: bytes) -> dict:
        """A line nested too deeply to read: a RECORD whose stream can be told fails alone."""
        stream = _STREAM.search(line)
        if stream is None or b'"RECORD"' not in line:
            raise InvalidInputLine(
                f"line {self.line_number} is nested too deeply to read; it starts {shown(line)}"
            )
        self.problem = (
            f"line {self.line_number}: the record is nested too deeply to read (more than "
            f"{sys.getrecursionlimit()} levels), so it was not sent"
        )
        name = json.loads(b'"' + stream.group(1) + b'"')
        return {"type": "RECORD", "stream": name, "record": {}}


def lines_of(file_input: t.IO[str] | None) -> t.Iterator[bytes]:
    """The input's lines as bytes: stdin and files are read as bytes, so bad UTF-8 can be repaired."""
    source: t.Any = file_input if file_input is not None else sys.stdin
    buffer = getattr(source, "buffer", None)
    if buffer is not None:
        yield from buffer
        return
    for line in source:
        yield line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")


def shown(line: bytes) -> str:
    return repr(line[:60].decode("utf-8", "replace"))


def _remember(constants: list[str]) -> t.Callable[[str], None]:
    def constant(name: str) -> None:
        constants.append(name)

    return constant


def _without_lone_surrogates(value: t.Any) -> tuple[t.Any, int]:
    """The value with every lone surrogate in its strings (keys too) replaced by U+FFFD, and how
    many strings changed.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            repaired = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return repaired, 1
        return value, 0
    if isinstance(value, dict):
        changed = 0
        repaired_dict = {}
        for key, item in value.items():
            new_key, key_changes = _without_lone_surrogates(key)
            new_item, item_changes = _without_lone_surrogates(item)
            repaired_dict[new_key] = new_item
            changed += key_changes + item_changes
        return repaired_dict, changed
    if isinstance(value, list):
        items = [_without_lone_surrogates(item) for item in value]
        return [item for item, _ in items], sum(changes for _, changes in items)
    return value, 0


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
