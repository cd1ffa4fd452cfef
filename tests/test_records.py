"""Unit tests for target_cbx1.records: lookup rules, key normalisation, hashing and payloads."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from target_cbx1.records import (
    LookupRule,
    PayloadOptions,
    RecordRejectedError,
    build_payload,
    external_id_of,
    lookup_rule_for,
    normalise_domain,
    normalise_email,
    record_hash,
)
from target_cbx1.repair import map_texts, without_mojibake

NO_OPTIONS = PayloadOptions(add_stream_key=False, metadata=None)
DOMAIN = LookupRule.named("domain")
EMAIL = LookupRule.named("email")


# --- normalise_domain / normalise_email -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" https://www.Acme.com/about ", "acme.com"),
        ("HTTP://ACME.COM", "acme.com"),
        ("acme.com:8443", "acme.com"),
        ("www.acme.com?ref=crm", "acme.com"),
        ("acme.com#top", "acme.com"),
        ("Acme.Com.", "acme.com"),
        ("shop.acme.co.uk", "shop.acme.co.uk"),
        ("www2.acme.com", "www2.acme.com"),
    ],
)
def test_normalise_domain_strips_scheme_www_port_path_and_case(raw: str, expected: str) -> None:
    assert normalise_domain(raw) == expected


def test_normalise_email_trims_and_lowercases() -> None:
    assert normalise_email("  Ann.Lee@Acme.COM \n") == "ann.lee@acme.com"


# --- LookupRule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "kind"),
    [
        ("domain", "domain"),
        ("companyDomain", "domain"),
        ("website", "domain"),
        ("email", "email"),
        ("workEmail", "email"),
        ("id", "text"),
        ("phone", "text"),
    ],
)
def test_lookup_rule_kind_follows_field_name(field: str, kind: str) -> None:
    assert LookupRule.named(field).kind == kind


def test_domain_key_is_normalised() -> None:
    assert DOMAIN.key_of("https://www.Acme.com/contact-us") == "acme.com"


def test_email_key_is_normalised() -> None:
    assert EMAIL.key_of(" Ann@Acme.COM ") == "ann@acme.com"


def test_text_key_is_trimmed_and_numbers_become_text() -> None:
    rule = LookupRule.named("id")
    assert rule.key_of("  A-17 ") == "A-17"
    assert rule.key_of(12345) == "12345"


@pytest.mark.parametrize("missing", [None, "", "   "])
@pytest.mark.parametrize("field", ["domain", "email", "id"])
def test_missing_key_is_rejected_with_message_naming_the_field(field: str, missing: object) -> None:
    with pytest.raises(RecordRejectedError, match=rf"^{field} is required") as caught:
        LookupRule.named(field).key_of(missing)
    assert caught.value.lookup_key is None


@pytest.mark.parametrize("bad", ["acme", "not a domain.com", "acme..com", "ann@acme.com", "https:///path"])
def test_invalid_domain_is_rejected(bad: str) -> None:
    with pytest.raises(RecordRejectedError, match="invalid domain"):
        DOMAIN.key_of(bad)


def test_invalid_domain_rejection_carries_the_normalised_key() -> None:
    with pytest.raises(RecordRejectedError) as caught:
        DOMAIN.key_of("HTTPS://Localhost/")
    assert caught.value.lookup_key == "localhost"


@pytest.mark.parametrize("bad", ["ann", "ann@acme", "ann@@acme.com", "ann lee@acme.com", "@acme.com"])
def test_invalid_email_is_rejected_with_normalised_key(bad: str) -> None:
    with pytest.raises(RecordRejectedError, match="invalid email") as caught:
        EMAIL.key_of(bad)
    assert caught.value.lookup_key == normalise_email(bad)


@pytest.mark.parametrize("rule", [DOMAIN, EMAIL])
def test_non_text_value_for_domain_or_email_is_rejected(rule: LookupRule) -> None:
    with pytest.raises(RecordRejectedError, match="expected text"):
        rule.key_of(42)


# --- lookup_rule_for --------------------------------------------------------------------------------


def test_lookup_fields_override_wins_over_stream_name() -> None:
    assert lookup_rule_for("accounts", ["id"], {"accounts": "website"}) == LookupRule.named("website")


def test_override_for_another_stream_is_ignored() -> None:
    assert lookup_rule_for("accounts", [], {"contacts": "phone"}) == LookupRule.named("domain")


@pytest.mark.parametrize("stream", ["accounts", "Account", "companies", "crm_company"])
def test_account_and_company_streams_use_domain(stream: str) -> None:
    assert lookup_rule_for(stream, ["id"], {}) == LookupRule.named("domain")


@pytest.mark.parametrize("stream", ["contacts", "Leads", "person", "people_person"])
def test_contact_lead_and_person_streams_use_email(stream: str) -> None:
    assert lookup_rule_for(stream, ["id"], {}) == LookupRule.named("email")


def test_other_stream_falls_back_to_its_single_key_property() -> None:
    assert lookup_rule_for("deals", ["dealId"], {}) == LookupRule.named("dealId")


@pytest.mark.parametrize("keys", [[], ["a", "b"]])
def test_no_rule_when_nothing_fits(keys: list[str]) -> None:
    assert lookup_rule_for("deals", keys, {}) is None


# --- record_hash ------------------------------------------------------------------------------------


def test_record_hash_is_stable_sha256_hex() -> None:
    first = record_hash({"domain": "acme.com", "name": "Acme", "employees": 10})
    again = record_hash({"domain": "acme.com", "name": "Acme", "employees": 10})
    assert first == again
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_record_hash_changes_with_content() -> None:
    assert record_hash({"domain": "acme.com"}) != record_hash({"domain": "acme.org"})
    assert record_hash({"domain": "acme.com"}) != record_hash({"domain": "acme.com", "name": None})


def test_record_hash_keeps_numbers_exact() -> None:
    assert record_hash({"amount": Decimal("1.50")}) != record_hash({"amount": Decimal("1.5")})
    assert record_hash({"amount": Decimal("1.50")}) == record_hash({"amount": Decimal("1.50")})


# --- external_id_of ---------------------------------------------------------------------------------


def test_external_id_prefers_crm_association_id() -> None:
    assert external_id_of({"crmAssociationId": "001A", "externalId": "EXT"}) == "001A"


def test_external_id_falls_back_to_hotglue_external_id() -> None:
    assert external_id_of({"externalId": "EXT"}) == "EXT"
    assert external_id_of({"crmAssociationId": None, "externalId": "EXT"}) == "EXT"


def test_external_id_is_none_when_absent() -> None:
    assert external_id_of({"domain": "acme.com"}) is None


# --- build_payload ----------------------------------------------------------------------------------


def test_payload_drops_sdc_columns_and_sends_normalised_key() -> None:
    record = {
        "domain": " https://www.Acme.com/ ",
        "name": "Acme",
        "_sdc_extracted_at": "2024-01-01T00:00:00Z",
        "_sdc_batched_at": "2024-01-01T00:00:01Z",
    }
    key, payload = build_payload(record, "accounts", DOMAIN, NO_OPTIONS)
    assert key == "acme.com"
    assert payload == {"domain": "acme.com", "name": "Acme"}


def test_payload_rejects_record_without_lookup_key() -> None:
    with pytest.raises(RecordRejectedError, match="email is required"):
        build_payload({"name": "Ann"}, "contacts", EMAIL, NO_OPTIONS)


def test_add_stream_key_adds_stream_name() -> None:
    options = PayloadOptions(add_stream_key=True, metadata=None)
    _, payload = build_payload({"email": "ann@acme.com"}, "contacts", EMAIL, options)
    assert payload["stream"] == "contacts"


def test_stream_key_absent_by_default() -> None:
    _, payload = build_payload({"email": "ann@acme.com"}, "contacts", EMAIL, NO_OPTIONS)
    assert "stream" not in payload


def test_metadata_is_added_when_record_has_none() -> None:
    options = PayloadOptions(add_stream_key=False, metadata={"source": "salesforce"})
    _, payload = build_payload({"email": "ann@acme.com"}, "contacts", EMAIL, options)
    assert payload["metadata"] == {"source": "salesforce"}


def test_metadata_is_merged_into_existing_metadata_object() -> None:
    options = PayloadOptions(add_stream_key=False, metadata={"source": "salesforce", "tier": "gold"})
    record = {"email": "ann@acme.com", "metadata": {"owner": "bob", "tier": "silver"}}
    _, payload = build_payload(record, "contacts", EMAIL, options)
    assert payload["metadata"] == {"owner": "bob", "source": "salesforce", "tier": "gold"}


def test_values_are_sent_as_given() -> None:
    amount = Decimal("1234.50")
    record = {
        "domain": "acme.com",
        "createdAt": "2024-03-01T10:00:00.000+01:00",
        "revenue": amount,
        "tags": ["a", "b"],
        "active": False,
    }
    _, payload = build_payload(record, "accounts", DOMAIN, NO_OPTIONS)
    assert payload["createdAt"] == "2024-03-01T10:00:00.000+01:00"
    assert payload["revenue"] is amount
    assert str(payload["revenue"]) == "1234.50"
    assert payload["tags"] == ["a", "b"]
    assert payload["active"] is False


def test_non_text_lookup_value_is_sent_as_it_is() -> None:
    key, payload = build_payload({"id": 7, "name": "Seven"}, "things", LookupRule.named("id"), NO_OPTIONS)
    assert key == "7"
    assert payload == {"id": 7, "name": "Seven"}


def test_text_lookup_value_is_sent_normalised() -> None:
    key, payload = build_payload({"code": " V-0042 "}, "vendors", LookupRule.named("code"), NO_OPTIONS)
    assert key == "V-0042"
    assert payload == {"code": "V-0042"}


def test_input_record_is_not_mutated() -> None:
    record = {
        "domain": "WWW.ACME.COM",
        "_sdc_table_version": 3,
        "metadata": {"owner": "bob"},
    }
    before = copy.deepcopy(record)
    options = PayloadOptions(add_stream_key=True, metadata={"source": "crm"})
    _, payload = build_payload(record, "accounts", DOMAIN, options)
    assert record == before
    assert payload["metadata"] is not record["metadata"]


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("münchen.de", "xn--mnchen-3ya.de"),
        ("xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),
        ("https://www.MÜNCHEN.de/", "xn--mnchen-3ya.de"),
        ("acme\u200b.com", "acme.com"),
        ("\ufeffacme.com.", "acme.com"),
    ],
)
def test_international_zero_width_and_trailing_dot_domains_share_one_key(value, key):
    assert DOMAIN.key_of(value) == key
    assert DOMAIN.normalise(value) == key


def test_an_international_domain_is_sent_as_written_and_matched_as_ascii():
    key, payload = build_payload({"domain": "https://München.de/"}, "accounts", DOMAIN, NO_OPTIONS)

    assert key == "xn--mnchen-3ya.de"
    assert payload["domain"] == "münchen.de"


def test_an_international_email_domain_is_matched_as_ascii():
    assert EMAIL.key_of("Ann@München.de") == "ann@xn--mnchen-3ya.de"
    assert EMAIL.key_of("ann\u200d@acme.com") == "ann@acme.com"


def test_repair_fixes_mojibake_in_nested_text_and_leaves_clean_text_alone():
    record = {"name": "CafÃ©", "tags": ["MÃ¼nchen", "plain"], "nested": {"city": "Zürich"}, "n": 3}

    fixed, count = map_texts(record, without_mojibake)

    assert fixed == {"name": "Café", "tags": ["München", "plain"], "nested": {"city": "Zürich"}, "n": 3}
    assert count == 2
    clean = {"name": "Acme", "city": "Zürich"}
    assert map_texts(clean, without_mojibake) == (clean, 0)
    assert map_texts(clean, without_mojibake)[0] is clean


def test_international_names_follow_idna_2008():
    assert DOMAIN.key_of("straße.de") == "xn--strae-oqa.de"
