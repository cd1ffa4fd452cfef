"""A test tap that emits HubSpot CRM v3 `companies` and `contacts`, read from a JSON file.

The file (setting `data_path`) holds `{"companies": [...], "contacts": [...]}`, each object as the
HubSpot API returns it: `id`, `properties` (each value a string or null, as MeltanoLabs' tap-hubspot
emits them), `createdAt`, `updatedAt`, `archived`. Streams sync incrementally by `updatedAt`: a run
emits only the objects updated after the bookmark (or after `start_date` on a first run), oldest
first.
"""

from __future__ import annotations

import json
import typing as t
from datetime import datetime, timezone
from pathlib import Path

from singer_sdk import Stream, Tap
from singer_sdk import typing as th


def _timestamp(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class HubspotObjectStream(Stream):
    """One HubSpot object type; its `properties` are the names in `hubspot_properties`."""

    hubspot_properties: t.ClassVar[tuple[str, ...]] = ()
    primary_keys: t.ClassVar[list[str]] = ["id"]
    replication_key = "updatedAt"
    is_sorted = True

    @property
    def schema(self) -> dict:
        return th.PropertiesList(
            th.Property("id", th.StringType, required=True),
            th.Property(
                "properties", th.ObjectType(*(th.Property(p, th.StringType) for p in self.hubspot_properties))
            ),
            th.Property("createdAt", th.DateTimeType),
            th.Property("updatedAt", th.DateTimeType, required=True),
            th.Property("archived", th.BooleanType),
        ).to_dict()

    def get_records(self, context: dict | None) -> t.Iterable[dict]:
        objects = json.loads(Path(self.config["data_path"]).read_text()).get(self.name, [])
        start = self.get_starting_timestamp(context)
        if start is not None and start.tzinfo is None:
            start = start.replace(tzinfo=timezone.utc)
        for obj in sorted(objects, key=lambda o: _timestamp(o["updatedAt"])):
            if start is None or _timestamp(obj["updatedAt"]) > start:
                yield obj


class CompaniesStream(HubspotObjectStream):
    name = "companies"
    hubspot_properties = (
        "name",
        "domain",
        "website",
        "industry",
        "numberofemployees",
        "annualrevenue",
        "createdate",
        "hs_lastmodifieddate",
    )


class ContactsStream(HubspotObjectStream):
    name = "contacts"
    hubspot_properties = (
        "email",
        "firstname",
        "lastname",
        "jobtitle",
        "company",
        "phone",
        "createdate",
        "lastmodifieddate",
    )


class TapHubspotFake(Tap):
    """HubSpot-shaped companies and contacts from `data_path`."""

    name = "tap-hubspot-fake"
    config_jsonschema = th.PropertiesList(
        th.Property("data_path", th.StringType, required=True, description="The JSON file to read."),
        th.Property("start_date", th.DateTimeType, description="On a first run, skip older objects."),
    ).to_dict()

    def discover_streams(self) -> list[Stream]:
        return [CompaniesStream(self), ContactsStream(self)]
