"""The singer-sdk standard target tests, each checked against what the local CBX1 sandbox stored.

Every SDK test runs against its own sandbox; `validate()` then looks at the sandbox's store and
at the state line the target printed, as a user checking the destination would.
"""

from __future__ import annotations

import io
import json
import typing as t
from contextlib import redirect_stdout

import pytest
from singer_sdk.testing import get_target_test_class, suites, target_tests
from singer_sdk.testing.runners import TargetTestRunner
from singer_sdk.testing.templates import TargetFileTestTemplate

from target_cbx1.sandbox import Sandbox
from target_cbx1.target import TargetCBX1
from tests.conftest import ACCESS_KEY, ORG_ID, sandbox_config

# The field the sandbox upserts each test stream by (it answers 404 for any other stream).
SANDBOX_LOOKUP_FIELDS = {
    "test_array_data": "id",
    "ForecastingTypeToCategory": "Id",
    "TestCamelcase": "Id",
    "test_duplicate_records": "id",
    "test_strings": "id",
    "test_strings_in_objects": "id",
    "test_strings_in_arrays": "id",
    "test_no_pk": "id",
    "test_optional_attributes": "id",
    "example_stream": "email",
    "test_record_before_schema": "id",
    "record_missing_fields": "id",
    "test_record_missing_key_property": "id",
    "test_schema_updates": "id",
}
# Streams without a single key property need lookup_fields in the target's config. pk_updates.singer
# nests its key_properties inside the schema, so the SDK sees none for example_stream.
TARGET_LOOKUP_FIELDS = {"test_no_pk": "id", "example_stream": "email"}
NO_LOOKUP_FIELD = "has no lookup field"


def singer_messages(test: TargetFileTestTemplate) -> list[dict[str, t.Any]]:
    """The messages of the test's .singer file."""
    lines = test.singer_filepath.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def records_by_stream(messages: list[dict[str, t.Any]]) -> dict[str, list[dict[str, t.Any]]]:
    """Each stream that got a SCHEMA, with its records in input order."""
    streams: dict[str, list[dict[str, t.Any]]] = {}
    for message in messages:
        if message["type"] == "SCHEMA":
            streams.setdefault(message["stream"], [])
        elif message["type"] == "RECORD":
            streams[message["stream"]].append(message["record"])
    return streams


class LandsInSandbox(TargetFileTestTemplate):
    """validate(): the file's records are stored as sent, and the state line reports each one."""

    def validate(self) -> None:
        sandbox: Sandbox = self.resource
        state = self.runner.state_messages[-1]
        streams = records_by_stream(singer_messages(self))
        assert set(state["bookmarks"]) == set(streams)
        for stream, records in streams.items():
            entries = state["bookmarks"][stream]
            assert len(entries) == len(records), stream
            if stream in SANDBOX_LOOKUP_FIELDS:
                self.check_landed(sandbox, stream, records, entries)
            else:
                self.check_failed_without_lookup_field(sandbox, stream, entries)
            outcome = "success" if stream in SANDBOX_LOOKUP_FIELDS else "fail"
            assert state["summary"][stream] == {
                "success": 0,
                "fail": 0,
                "existing": 0,
                "updated": 0,
                outcome: len(records),
            }

    @staticmethod
    def check_landed(
        sandbox: Sandbox, stream: str, records: list[dict[str, t.Any]], entries: list[dict[str, t.Any]]
    ) -> None:
        """The last record per lookup key is stored exactly; each entry carries the stored id."""
        field = SANDBOX_LOOKUP_FIELDS[stream]
        stored = sandbox.records(stream)
        assert {key: item.record for key, item in stored.items()} == {str(r[field]): r for r in records}
        for entry, record in zip(entries, records, strict=True):
            assert entry["success"] is True, entry
            assert entry["lookupKey"] == str(record[field])
            assert entry["id"] == stored[entry["lookupKey"]].id

    @staticmethod
    def check_failed_without_lookup_field(
        sandbox: Sandbox, stream: str, entries: list[dict[str, t.Any]]
    ) -> None:
        """Nothing was sent for the stream; every entry names the missing lookup field."""
        for entry in entries:
            assert entry["success"] is False
            assert NO_LOOKUP_FIELD in entry["error"]
            assert "lookup_fields" in entry["error"]
        assert not [exchange for exchange in sandbox.exchanges if exchange.stream == stream]


class StoresNothing(TargetFileTestTemplate):
    """validate() for tests where the SDK expects an error: nothing reached the API."""

    def validate(self) -> None:
        sandbox: Sandbox = self.resource
        assert sandbox.exchanges == []
        assert all(not sandbox.records(stream) for stream in SANDBOX_LOOKUP_FIELDS)


class ArrayData(LandsInSandbox, target_tests.TargetArrayData):
    """Arrays arrive as arrays."""


class CamelcaseComplexSchema(LandsInSandbox, target_tests.TargetCamelcaseComplexSchema):
    """Two schemas and no records: the stream is in the state, with nothing sent."""


class Camelcase(LandsInSandbox, target_tests.TargetCamelcaseTest):
    """Mixed-case stream and field names are kept."""


class CliPrints(target_tests.TargetCliPrintsTest):
    """--about names the target and its settings; the secret ones are marked."""

    def validate(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out):
            self.target.print_about(output_format="json")
        about = json.loads(out.getvalue())
        assert about["name"] == "target-cbx1"
        assert about["settings"]["properties"]["access_key"]["secret"] is True
        assert self.resource.exchanges == []


class DuplicateRecords(LandsInSandbox, target_tests.TargetDuplicateRecords):
    """Repeated keys: each version is written, in order, never two of one key in a request."""

    def validate(self) -> None:
        super().validate()
        sandbox: Sandbox = self.resource
        stored = sandbox.records("test_duplicate_records")
        assert {key: item.writes for key, item in stored.items()} == {"1": 3, "2": 2}
        assert all(len(set(e.lookup_keys)) == len(e.lookup_keys) for e in sandbox.exchanges)


class EncodedStringData(LandsInSandbox, target_tests.TargetEncodedStringData):
    """Unicode, escapes and control characters arrive unchanged."""

    def validate(self) -> None:
        super().validate()
        stored = self.resource.records("test_strings")
        assert stored["3"].record["info"] == "简单的字串"
        assert stored["11"].record["info"] == "Control Characters in string: \x00 A \x01"


class InvalidSchema(StoresNothing, target_tests.TargetInvalidSchemaTest):
    """A schema without properties stops the run (InvalidJSONSchema) before anything is sent."""


class NoPrimaryKeys(LandsInSandbox, target_tests.TargetNoPrimaryKeys):
    """A stream without key properties lands by its configured lookup field."""


class OptionalAttributes(LandsInSandbox, target_tests.TargetOptionalAttributes):
    """Absent optional fields stay absent."""


class PrimaryKeyUpdates(LandsInSandbox, target_tests.TargetPrimaryKeyUpdates):
    """Both records land by email (a real key_properties change is covered in test_sinks.py)."""


class RecordBeforeSchema(StoresNothing, target_tests.TargetRecordBeforeSchemaTest):
    """A record before its schema stops the run before anything is sent."""


class RecordMissingKeyProperty(StoresNothing, target_tests.TargetRecordMissingKeyProperty):
    """A record without its key property stops the run before anything is sent."""


class RecordMissingOptionalFields(LandsInSandbox, target_tests.TargetRecordMissingOptionalFields):
    """A record without an optional field lands without it."""


class SchemaNoProperties(LandsInSandbox, target_tests.TargetSchemaNoProperties):
    """Streams with only a nested object have no lookup field: their records fail, named why."""


class SchemaUpdates(LandsInSandbox, target_tests.TargetSchemaUpdates):
    """Records under each schema version land, including fields added later."""


class SpecialCharsInAttributes(target_tests.TargetSpecialCharsInAttributes):
    """A stream name with : ! ? cannot go into a URL path: each record fails, saying to rename the
    stream with a stream map, and nothing is sent.
    """

    def validate(self) -> None:
        sandbox: Sandbox = self.resource
        state = self.runner.state_messages[-1]
        records = records_by_stream(singer_messages(self))["test:SpecialChars!in?attributes"]
        entries = state["bookmarks"]["test:SpecialChars!in?attributes"]
        assert len(entries) == len(records)
        for entry in entries:
            assert entry["success"] is False
            assert "cannot name a CBX1 endpoint" in entry["error"]
            assert "stream map" in entry["error"]
        assert sandbox.exchanges == []


SUITE = suites.SingerTestSuite(
    kind="target",
    tests=[
        ArrayData,
        CamelcaseComplexSchema,
        Camelcase,
        CliPrints,
        DuplicateRecords,
        EncodedStringData,
        InvalidSchema,
        NoPrimaryKeys,
        OptionalAttributes,
        PrimaryKeyUpdates,
        RecordBeforeSchema,
        RecordMissingKeyProperty,
        RecordMissingOptionalFields,
        SchemaNoProperties,
        SchemaUpdates,
        SpecialCharsInAttributes,
    ],
)

# The runner fixture below replaces the generated one, so the config (and parse_env_config) go there.
StandardTargetTests = get_target_test_class(TargetCBX1, custom_suites=[SUITE], include_target_tests=False)


class TestStandardTargetSuite(StandardTargetTests):
    """The SDK's standard target tests against TargetCBX1, each with a fresh sandbox."""

    @pytest.fixture
    def resource(self) -> t.Iterator[Sandbox]:
        with Sandbox(access_key=ACCESS_KEY, org_id=ORG_ID, lookup_fields=SANDBOX_LOOKUP_FIELDS) as sandbox:
            yield sandbox

    @pytest.fixture
    def runner(self, resource: Sandbox) -> TargetTestRunner:
        config = sandbox_config(resource, lookup_fields=TARGET_LOOKUP_FIELDS)
        return TargetTestRunner(TargetCBX1, config=config, parse_env_config=False)


def test_every_standard_target_test_is_included() -> None:
    included = {base for test in SUITE.tests for base in test.__mro__}
    assert set(suites.target_tests.tests) <= included
