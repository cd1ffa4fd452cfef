"""Record validation against the stream's schema, compiled to Python once per schema (fastjsonschema)."""

from __future__ import annotations

import typing as t

import fastjsonschema
from singer_sdk.exceptions import InvalidJSONSchema, InvalidRecord
from singer_sdk.sinks.core import BaseJSONSchemaValidator


class CompiledValidator(BaseJSONSchemaValidator):
    """Checks types and required fields; string formats are not checked and records are not changed."""

    def __init__(self, schema: dict[str, t.Any]) -> None:
        super().__init__(schema)
        try:
            self._check = fastjsonschema.compile(schema, use_default=False, use_formats=False)
        except fastjsonschema.JsonSchemaDefinitionException as exc:
            raise InvalidJSONSchema(f"The stream's schema cannot be used to check records: {exc}") from exc

    def validate(self, record: dict[str, t.Any]) -> None:
        try:
            self._check(record)
        except fastjsonschema.JsonSchemaValueException as exc:
            value = repr(exc.value)
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise InvalidRecord(f"{exc.message}, not {shown}", record) from exc
