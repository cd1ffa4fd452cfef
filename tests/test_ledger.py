"""Unit tests for target_cbx1.ledger: the HotGlue state line."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
import tracemalloc
import uuid
from decimal import Decimal
from typing import Any
from unittest.mock import patch

from target_cbx1.incremental import IncrementalStateFile, merged
from target_cbx1.ledger import StateLedger


def written(ledger: StateLedger) -> str:
    out = io.StringIO()
    ledger.write(out)
    return out.getvalue()


def state_of(ledger: StateLedger) -> dict[str, Any]:
    return json.loads(written(ledger))


def test_write_produces_one_line_of_bare_json() -> None:
    ledger = StateLedger()
    ledger.add("accounts", "h1", "001A").succeed("id-1")
    text = written(ledger)
    assert text.endswith("\n")
    assert text.count("\n") == 1
    state = json.loads(text)
    assert set(state) == {"bookmarks", "summary"}
    assert "type" not in state


class CountingWriter(io.StringIO):
    """A text stream that counts its write calls (an unbuffered stdout makes each a system call)."""

    calls = 0

    def write(self, text: str) -> int:
        self.calls += 1
        return super().write(text)


def test_a_long_state_line_goes_out_in_few_large_writes() -> None:
    ledger = StateLedger()
    for number in range(30000):
        ledger.add("accounts", f"h{number}", f"00{number}").succeed(f"id-{number}")
    out = CountingWriter()
    ledger.write(out)
    assert out.calls <= 4  # ~3 MB in pieces of about 1 MB, not one call per entry
    state = json.loads(out.getvalue())
    assert [entry["hash"] for entry in state["bookmarks"]["accounts"]] == [f"h{n}" for n in range(30000)]


def test_empty_ledger_writes_empty_bookmarks_and_summary() -> None:
    assert state_of(StateLedger()) == {"bookmarks": {}, "summary": {}}


def test_stream_opened_without_records_has_all_four_zero_counters() -> None:
    ledger = StateLedger()
    ledger.open_stream("contacts")
    state = state_of(ledger)
    assert state["bookmarks"] == {"contacts": []}
    assert state["summary"] == {"contacts": {"success": 0, "fail": 0, "existing": 0, "updated": 0}}


def test_entries_keep_input_order_per_stream() -> None:
    ledger = StateLedger()
    for number in range(1, 4):
        ledger.add("accounts", f"a{number}", f"A{number}").succeed(f"id-a{number}")
        ledger.add("contacts", f"c{number}", f"C{number}").succeed(f"id-c{number}")
    state = state_of(ledger)
    assert [entry["hash"] for entry in state["bookmarks"]["accounts"]] == ["a1", "a2", "a3"]
    assert [entry["externalId"] for entry in state["bookmarks"]["contacts"]] == ["C1", "C2", "C3"]


def test_order_follows_adding_not_deciding() -> None:
    ledger = StateLedger()
    entries = [ledger.add("accounts", f"h{number}", None) for number in range(3)]
    for entry in reversed(entries):
        entry.succeed("x")
    assert [e["hash"] for e in state_of(ledger)["bookmarks"]["accounts"]] == ["h0", "h1", "h2"]


def test_successful_entry_has_exactly_the_documented_keys() -> None:
    ledger = StateLedger()
    entry = ledger.add("accounts", "h1", "001A")
    entry.lookup_key = "acme.com"
    entry.succeed("7bb72d89")
    [bookmark] = state_of(ledger)["bookmarks"]["accounts"]
    assert bookmark == {
        "hash": "h1",
        "success": True,
        "id": "7bb72d89",
        "externalId": "001A",
        "lookupKey": "acme.com",
    }


def test_failed_entry_carries_error_and_null_id() -> None:
    ledger = StateLedger()
    ledger.add("accounts", "h1", "001B").fail("domain is required")
    [bookmark] = state_of(ledger)["bookmarks"]["accounts"]
    assert bookmark == {
        "hash": "h1",
        "success": False,
        "id": None,
        "externalId": "001B",
        "lookupKey": None,
        "error": "domain is required",
    }


def test_batch_id_and_mapped_record_appear_only_when_set() -> None:
    ledger = StateLedger()
    plain = ledger.add("contacts", "h1", "C1")
    plain.succeed("id-1")
    rich = ledger.add("contacts", "h2", "C2")
    rich.batch_id = "0123abcd"
    rich.mapped_record = {"email": "ann@acme.com"}
    rich.succeed("id-2")
    first, second = state_of(ledger)["bookmarks"]["contacts"]
    assert "hgBatchId" not in first
    assert "mapped_record" not in first
    assert second["hgBatchId"] == "0123abcd"
    assert second["mapped_record"] == {"email": "ann@acme.com"}


def test_summary_counts_success_fail_and_updated() -> None:
    ledger = StateLedger()
    ledger.add("accounts", "h1", None).succeed("id-1")
    ledger.add("accounts", "h2", None).succeed("id-2", updated=True)
    ledger.add("accounts", "h3", None).fail("Invalid domain")
    ledger.add("accounts", "h4", None).succeed("id-4")
    assert state_of(ledger)["summary"]["accounts"] == {"success": 2, "fail": 1, "existing": 0, "updated": 1}


def test_duplicate_hash_counts_as_existing_and_reuses_first_outcome() -> None:
    ledger = StateLedger()
    first = ledger.add("accounts", "same", "001A")
    first.lookup_key = "acme.com"
    first.succeed("id-1")
    duplicate = ledger.add("accounts", "same", "001A-copy")
    assert duplicate.original is first
    state = state_of(ledger)
    second_bookmark = state["bookmarks"]["accounts"][1]
    assert second_bookmark["success"] is True
    assert second_bookmark["id"] == "id-1"
    assert second_bookmark["lookupKey"] == "acme.com"
    assert second_bookmark["externalId"] == "001A-copy"
    assert state["summary"]["accounts"] == {"success": 1, "fail": 0, "existing": 1, "updated": 0}


def test_duplicate_reuses_outcome_decided_after_it_was_added() -> None:
    ledger = StateLedger()
    first = ledger.add("accounts", "same", None)
    ledger.add("accounts", "same", None)
    assert state_of(ledger)["bookmarks"]["accounts"] == []
    first.fail("Invalid domain")
    state = state_of(ledger)
    assert [b["error"] for b in state["bookmarks"]["accounts"]] == ["Invalid domain", "Invalid domain"]
    assert [b["success"] for b in state["bookmarks"]["accounts"]] == [False, False]
    assert state["summary"]["accounts"] == {"success": 0, "fail": 1, "existing": 1, "updated": 0}


def test_same_hash_in_another_stream_is_not_a_duplicate() -> None:
    ledger = StateLedger()
    ledger.add("accounts", "same", None).succeed("id-a")
    contact = ledger.add("contacts", "same", None)
    assert contact.original is None
    contact.succeed("id-c")
    assert state_of(ledger)["summary"]["contacts"]["existing"] == 0


def test_a_record_still_in_flight_is_left_out_but_every_decided_one_is_reported() -> None:
    ledger = StateLedger()
    ledger.add("accounts", "h1", "A1").succeed("id-1")
    in_flight = ledger.add("accounts", "h2", "A2")
    ledger.add("accounts", "h3", "A3").fail("boom")  # decided, after h2 in input order
    state = state_of(ledger)
    assert [b["hash"] for b in state["bookmarks"]["accounts"]] == ["h1", "h3"]  # a gap, in input order
    assert state["summary"]["accounts"] == {"success": 1, "fail": 1, "existing": 0, "updated": 0}

    in_flight.succeed("id-2")
    assert [b["hash"] for b in state_of(ledger)["bookmarks"]["accounts"]] == ["h1", "h2", "h3"]


def resumed(bookmarks: list[dict[str, Any]]) -> StateLedger:
    ledger = StateLedger()
    ledger.seed({"bookmarks": {"contacts": bookmarks}})
    return ledger


def bookmark(record_hash: str, success: bool, key: str, crm_id: str) -> dict[str, Any]:
    entry = {"hash": record_hash, "success": success, "id": f"id-{record_hash}" if success else None}
    return {**entry, "externalId": crm_id, "lookupKey": key} | ({} if success else {"error": "boom"})


def test_a_resumed_run_reports_in_its_own_input_order_every_record_once():
    ledger = resumed([bookmark("a", True, "a@x.com", "1"), bookmark("b", True, "b@x.com", "2")])

    entries = [
        ledger.add("contacts", record_hash, crm_id)
        for record_hash, crm_id in (("c", "3"), ("b", "2"), ("b", "2"))
    ]
    entries[0].succeed("id-c")

    state = state_of(ledger)
    assert [(b["hash"], b["id"]) for b in state["bookmarks"]["contacts"]] == [
        ("a", "id-a"),  # not in this run's input: first
        ("c", "id-c"),
        ("b", "id-b"),  # confirmed earlier: its outcome at its own position, not sent again
        ("b", "id-b"),  # an identical repeat of it in this run
    ]
    assert entries[1].success is True
    assert entries[1].original is None
    assert state["summary"]["contacts"] == {"success": 3, "fail": 0, "existing": 1, "updated": 0}


def test_a_record_that_failed_earlier_is_sent_again_and_replaces_its_old_entry():
    ledger = resumed([bookmark("a", False, "a@x.com", "1")])

    entry = ledger.add("contacts", "a", "1")

    assert entry.success is None  # to be sent
    entry.succeed("id-new")
    assert [(b["hash"], b["id"]) for b in state_of(ledger)["bookmarks"]["contacts"]] == [("a", "id-new")]


def test_a_failure_superseded_by_a_later_write_of_its_key_is_not_sent_again():
    ledger = resumed(
        [bookmark("old", False, "ann@x.com", "0031"), bookmark("new", True, "ann@x.com", "0032")]
    )

    old = ledger.add("contacts", "old", "0031")

    assert old.success is False
    assert old.error is not None
    assert old.error.startswith("superseded: a later record with lookupKey 'ann@x.com' (CRM id 0032)")
    state = state_of(ledger)
    assert [b["hash"] for b in state["bookmarks"]["contacts"]] == ["new", "old"]


def test_a_failure_after_its_key_s_last_write_is_sent_again_when_that_write_is_not_read_again():
    """In its own stream, "later" is the earlier run's order: a resumed tap (singer mode) or a changed
    record may not bring the older success back, and it must not stop the newer record."""
    ledger = resumed([bookmark("a", True, "ann@x.com", "1"), bookmark("b", False, "ann@x.com", "2")])

    assert ledger.add("contacts", "b", "2").success is None  # to be sent again


def test_a_failure_superseded_by_a_later_write_of_its_key_in_another_stream_is_not_sent_again():
    """contacts and leads write the same CBX1 contacts: a lead written after a contact failed wins."""
    ledger = StateLedger()
    ledger.seed(
        {
            "bookmarks": {
                "contacts": [bookmark("old", False, "ann@x.com", "0031")],
                "leads": [bookmark("new", True, "ann@x.com", "00Q1")],
            }
        }
    )

    old = ledger.add("contacts", "old", "0031")  # the input reaches the contact first: the lead is later

    assert old.success is False
    assert old.error is not None
    assert old.error.startswith("superseded: a later record with lookupKey 'ann@x.com' (CRM id 00Q1)")


def test_a_failure_after_the_last_write_of_its_key_is_sent_again():
    """The lead came first in the input: the contact that failed after it is the newer data."""
    ledger = StateLedger()
    ledger.seed(
        {
            "bookmarks": {
                "contacts": [bookmark("newer", False, "ann@x.com", "0031")],
                "leads": [bookmark("older", True, "ann@x.com", "00Q1")],
            }
        }
    )

    assert ledger.add("leads", "older", "00Q1").success is True
    assert ledger.add("contacts", "newer", "0031").success is None  # to be sent again


def test_summary_counts_sum_to_number_of_bookmark_entries() -> None:
    ledger = StateLedger()
    ledger.add("accounts", "h1", None).succeed("1")
    ledger.add("accounts", "h1", None)
    ledger.add("accounts", "h2", None).succeed("2", updated=True)
    ledger.add("accounts", "h3", None).fail("bad")
    ledger.add("accounts", "h4", None)  # undecided
    ledger.add("accounts", "h5", None).fail("after the undecided one")
    ledger.add("contacts", "c1", None).fail("bad")
    state = state_of(ledger)
    for stream, bookmarks in state["bookmarks"].items():
        assert sum(state["summary"][stream].values()) == len(bookmarks)
    assert len(state["bookmarks"]["accounts"]) == 5  # all but the undecided one


def test_numeric_external_ids_serialise_exactly() -> None:
    ledger = StateLedger()
    ledger.add("accounts", "h1", Decimal("12345678901234567890.10")).succeed("id-1")
    ledger.add("accounts", "h2", 2**63 + 1).succeed("id-2")
    text = written(ledger)
    assert '"externalId":12345678901234567890.10' in text
    assert f'"externalId":{2**63 + 1}' in text


def test_the_state_can_be_written_while_streams_open_in_another_thread():
    ledger = StateLedger()
    failures: list[BaseException] = []

    def write_often() -> None:
        try:
            for _ in range(300):
                ledger.write(io.StringIO())
        except BaseException as exc:
            failures.append(exc)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads very often, so the two meet mid-write
    try:
        writer = threading.Thread(target=write_often)
        writer.start()
        for number in range(3000):
            ledger.open_stream(f"stream{number}")
        writer.join()
    finally:
        sys.setswitchinterval(switch_interval)

    assert failures == []


def test_the_incremental_file_writes_at_most_three_times_its_final_size(tmp_path):
    state_file = IncrementalStateFile(tmp_path / "state.json")
    ledger = StateLedger()
    state_file.start(ledger)
    for batch in range(400):
        for number in range(50):
            ledger.add("accounts", f"h{batch}-{number}", f"A{batch}-{number}").succeed(f"id-{batch}-{number}")
        state_file.flush(ledger)  # what the journal thread does once a second

    state_file.save(ledger)

    final = (tmp_path / "state.json").stat().st_size
    assert len(state_of_file(tmp_path / "state.json")["bookmarks"]["accounts"]) == 20_000
    assert state_file.bytes_written <= 3 * final
    assert not (tmp_path / "state.json.journal").exists()


def test_a_crashed_run_is_read_back_from_the_file_and_its_journal_a_torn_line_ignored(tmp_path):
    state_file = IncrementalStateFile(tmp_path / "state.json")
    ledger = StateLedger()
    state_file.start(ledger)
    ledger.add("accounts", "h1", "A1").succeed("id-1")
    failed = ledger.add("accounts", "h2", "A2")
    failed.fail("boom")
    state_file.flush(ledger)
    with state_file.journal_path.open("ab") as journal:
        journal.write(b'["accounts", {"hash": "h3", "succ')  # the crash tore the last line

    earlier = IncrementalStateFile(tmp_path / "state.json").load()

    assert earlier is not None
    assert [(b["hash"], b["success"]) for b in earlier["bookmarks"]["accounts"]] == [
        ("h1", True),
        ("h2", False),
    ]


def test_a_later_journal_entry_for_a_record_replaces_the_earlier_one_in_place():
    bookmarks = {"accounts": [{"hash": "a", "success": False}, {"hash": "b", "success": True}]}

    merged_state = merged(
        bookmarks, [("accounts", {"hash": "a", "success": True}), ("contacts", {"hash": "c"})]
    )

    assert merged_state == {
        "accounts": [{"hash": "a", "success": True}, {"hash": "b", "success": True}],
        "contacts": [{"hash": "c"}],
    }


def state_of_file(path) -> dict[str, Any]:
    return json.loads(path.read_text())


def sha256_of(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()


def test_decided_entries_take_under_300_bytes_each() -> None:
    ledger = StateLedger()
    ledger.add("accounts", sha256_of(-1), "warm-up").succeed("id")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(20000):
            entry = ledger.add("accounts", sha256_of(number), f"{1000000 + number}")
            entry.lookup_key = f"person{number}@company{number % 997}.com"
            entry.succeed(str(uuid.UUID(int=number)))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / 20000 < 300
    assert state_of(ledger)["summary"]["accounts"]["success"] == 20001


def test_compacted_entries_write_the_same_state_as_live_ones() -> None:
    def fill(ledger: StateLedger) -> None:
        for number in range(600):  # past COMPACT_EVERY twice, so most entries are compacted
            record_hash = sha256_of(number % 500) if number % 3 else f"h{number}"
            entry = ledger.add("accounts", record_hash, number if number % 2 else f"ext-{number}")
            if entry.success is not None or entry.original is not None:
                continue
            entry.lookup_key = f"key-{number % 50}"
            if number % 7 == 0:
                entry.batch_id = f"batch-{number // 20}"
            if number % 11 == 0:
                entry.mapped_record = {"name": "Acme", "revenue": Decimal("1.50")}
            if number % 13 == 0:
                entry.fail(f"CBX1 rejected the record: invalid domain {number}")
            else:
                entry.succeed(None if number % 17 == 0 else f"id-{number}", updated=number % 5 == 0)

    compacted = StateLedger()
    fill(compacted)
    live = StateLedger()
    with patch("target_cbx1.ledger.COMPACT_EVERY", 10**9):
        fill(live)
    assert isinstance(compacted._entries["accounts"][1], bytes)  # the layout this test is about
    assert not any(isinstance(item, bytes) for item in live._entries["accounts"])
    assert written(compacted) == written(live)
    assert compacted.totals() == live.totals()


def test_a_record_identical_to_a_compacted_one_takes_its_outcome() -> None:
    ledger = StateLedger()
    first = ledger.add("accounts", sha256_of(1), "001")
    first.lookup_key = "acme.com"
    first.succeed("id-1")
    for number in range(2, 600):
        ledger.add("accounts", sha256_of(number), f"00{number}").fail("no lookup key")
    repeat = ledger.add("accounts", sha256_of(1), "001-again")
    assert repeat.original is not None
    assert repeat.outcome.success is True
    bookmarks = state_of(ledger)["bookmarks"]["accounts"]
    assert bookmarks[-1] == {
        "hash": sha256_of(1),
        "success": True,
        "id": "id-1",
        "externalId": "001-again",
        "lookupKey": "acme.com",
    }
    assert state_of(ledger)["summary"]["accounts"] == {"success": 1, "fail": 598, "existing": 1, "updated": 0}


def test_a_journal_line_names_no_keys_and_reads_back_as_the_bookmark(tmp_path):
    state_file = IncrementalStateFile(tmp_path / "state.json")
    ledger = StateLedger()
    state_file.start(ledger)
    written_entry = ledger.add("accounts", "h1", "A1")
    written_entry.lookup_key = "acme.com"
    written_entry.succeed("id-1")
    failed = ledger.add("accounts", "h2", 42)
    failed.batch_id = "batch-1"
    failed.fail("CBX1 rejected the record: invalid domain")
    state_file.flush(ledger)

    lines = state_file.journal_path.read_bytes().splitlines()
    assert lines[0] == b'["accounts","h1",true,"id-1","A1","acme.com"]'
    earlier = IncrementalStateFile(tmp_path / "state.json").load()
    assert earlier is not None
    assert earlier["bookmarks"]["accounts"] == [
        {"hash": "h1", "success": True, "id": "id-1", "externalId": "A1", "lookupKey": "acme.com"},
        {
            "hash": "h2",
            "success": False,
            "id": None,
            "externalId": 42,
            "lookupKey": None,
            "error": "CBX1 rejected the record: invalid domain",
            "hgBatchId": "batch-1",
        },
    ]


def test_a_journal_in_its_first_form_is_still_read(tmp_path):
    (tmp_path / "state.json.journal").write_bytes(
        b'["accounts", {"hash": "h1", "success": true, "id": "id-1", "externalId": "A1"}]\n'
    )

    earlier = IncrementalStateFile(tmp_path / "state.json").load()

    assert earlier == {
        "bookmarks": {"accounts": [{"hash": "h1", "success": True, "id": "id-1", "externalId": "A1"}]}
    }
