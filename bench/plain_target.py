"""The baseline: a singer-sdk target with default settings whose sink writes nowhere.

It pays for what every SDK target pays for (reading, validation, the SDK's record handling), so the
benchmark can compare target-cbx1's whole record path with the SDK's own.
"""

from __future__ import annotations

from singer_sdk import typing as th
from singer_sdk.sinks import BatchSink
from singer_sdk.target_base import Target


class DiscardingSink(BatchSink):
    """Takes records in batches and drops them."""

    def process_batch(self, context: dict) -> None:
        """Nothing to write: the cost measured is the SDK's record path."""


class PlainTarget(Target):
    """A default singer-sdk target."""

    name = "plain-sdk-target"
    config_jsonschema = th.PropertiesList().to_dict()
    default_sink_class = DiscardingSink


if __name__ == "__main__":
    PlainTarget.cli()
