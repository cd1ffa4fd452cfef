"""Reads Singer lines, numbering them so that a bad one is named by its line number."""

from __future__ import annotations

import typing as t
from collections import Counter

from singer_sdk.exceptions import InvalidJSONSchema, MissingKeyPropertiesError, RecordsWithoutSchemaException
from singer_sdk.singerlib.encoding import SimpleSingerReader
from singer_sdk.singerlib.exceptions import InvalidInputLine, SingerReadError

from target_cbx1 import jsonio

# Errors that mean the input is wrong: the run stops, naming the line.
INPUT_ERRORS = (SingerReadError, RecordsWithoutSchemaException, MissingKeyPropertiesError, InvalidJSONSchema)


class NumberedLineReader(SimpleSingerReader):
    """The SDK's line reader, plus line numbers in errors and a check before each line."""

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.before_line: t.Callable[[], None] = lambda: None

    def process_lines(
        self, file_input: t.IO[str] | None, callbacks: dict[str, t.Callable[[dict], None]]
    ) -> t.Counter[str]:
        stats: t.Counter[str] = Counter()
        for number, line in enumerate(file_input or self.default_input, start=1):
            self.line_number = number
            self.before_line()
            if not line.strip():
                continue
            message = self.deserialize_json(line)
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

    def deserialize_json(self, line: str) -> dict:
        try:
            message = jsonio.decode(line)
        except jsonio.DecodeError as exc:
            raise InvalidInputLine(
                f"line {self.line_number} is not valid JSON ({exc}); it starts {line[:60]!r}"
            ) from None
        if not isinstance(message, dict):
            raise InvalidInputLine(
                f"line {self.line_number} is JSON but not an object; it starts {line[:60]!r}"
            )
        return message
