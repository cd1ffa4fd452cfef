"""Messy input: what can be repaired is sent, a record that cannot be is failed alone, the job goes on."""

from __future__ import annotations

import gzip
import json
import subprocess

import pytest

from target_cbx1.sandbox import Sandbox
from tests.conftest import ACCOUNT_SCHEMA, lines_of, sandbox_config
from tests.test_end_to_end import COMMAND, Result, env_with, run_command

SCHEMA = {"type": "SCHEMA", "stream": "accounts", "schema": ACCOUNT_SCHEMA, "key_properties": []}


def account_line(number: int, name: str | None = None) -> str:
    record = {
        "crmAssociationId": f"A{number}",
        "name": name or f"Company {number}",
        "domain": f"c{number}.com",
    }
    return json.dumps({"type": "RECORD", "stream": "accounts", "record": record})


def run_bytes(sandbox: Sandbox, tmp_path, data: bytes) -> Result:
    """Run the real command on raw bytes, as a file of them piped into stdin."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(sandbox_config(sandbox)))
    process = subprocess.run(
        [COMMAND, "--config", str(config)],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
        env=env_with(None),
    )
    decoded = subprocess.CompletedProcess(
        process.args, process.returncode, process.stdout.decode(), process.stderr.decode()
    )
    return Result(decoded)


def assert_the_deep_record_failed_alone(result: Result) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    bad, good = result.entries("accounts")
    assert bad["success"] is False
    assert "nested too deeply" in bad["error"]
    assert good["success"] is True


def test_a_utf8_bom_before_the_first_line_is_accepted(sandbox, tmp_path):
    data = b"\xef\xbb\xbf" + (lines_of([SCHEMA]) + account_line(1) + "\n").encode()

    result = run_bytes(sandbox, tmp_path, data)

    assert result.returncode == 0, result.stderr
    assert result.entries("accounts")[0]["success"] is True


def test_bytes_that_are_not_utf8_are_replaced_and_the_record_sent(sandbox, tmp_path):
    bad = account_line(2, "Caf\udcff").encode("utf-8", "surrogateescape")  # a raw \xff byte
    data = lines_of([SCHEMA]).encode() + bad + b"\n" + account_line(3).encode() + b"\n"

    result = run_bytes(sandbox, tmp_path, data)

    assert result.returncode == 0, result.stderr
    assert [e["success"] for e in result.entries("accounts")] == [True, True]
    assert sandbox.records("accounts")["c2.com"].record["name"] == "Caf\ufffd"
    assert "Stream 'accounts': 1 records held bytes that are not UTF-8" in result.stderr


def test_lone_surrogate_escapes_are_replaced_and_the_record_sent(sandbox, tmp_path):
    line = account_line(4, "X").replace('"X"', '"Bad \\ud800 name"')

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([SCHEMA]) + line + "\n")

    assert result.returncode == 0, result.stderr
    assert result.entries("accounts")[0]["success"] is True
    assert sandbox.records("accounts")["c4.com"].record["name"] == "Bad \ufffd name"


def test_nan_or_infinity_fails_only_that_record(sandbox, tmp_path):
    nan = account_line(5).replace('"Company 5"', "NaN")
    text = lines_of([SCHEMA]) + account_line(6) + "\n" + nan + "\n" + account_line(7) + "\n"

    result = run_command(sandbox_config(sandbox), tmp_path, text)

    assert result.returncode == 0, result.stderr
    good, bad, after = result.entries("accounts")
    assert good["success"] is True
    assert after["success"] is True
    assert bad["success"] is False
    assert bad["error"].startswith("line 3: the record holds NaN, which JSON does not allow")
    assert bad["externalId"] == "A5"
    assert "c5.com" not in sandbox.records("accounts")


def test_a_record_nested_too_deeply_fails_alone_without_a_traceback(sandbox, tmp_path):
    deep = json.dumps({"type": "RECORD", "stream": "accounts", "record": {"domain": "d.com"}})
    deep = deep.replace('"d.com"', "[" * 100_000 + "]" * 100_000)

    result = run_command(
        sandbox_config(sandbox), tmp_path, lines_of([SCHEMA]) + deep + "\n" + account_line(8) + "\n"
    )

    assert_the_deep_record_failed_alone(result)


def test_a_record_that_is_not_an_object_fails_alone_naming_its_line(sandbox, tmp_path):
    lines = [SCHEMA, *({"type": "RECORD", "stream": "accounts", "record": odd} for odd in (None, [1], "x"))]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of(lines) + account_line(9) + "\n")

    assert result.returncode == 0, result.stderr
    entries = result.entries("accounts")
    assert [e["success"] for e in entries] == [False, False, False, True]
    assert entries[0]["error"] == "line 2: the RECORD's record is null, not an object, so it was not sent"
    assert "record is a list" in entries[1]["error"]


def test_records_read_before_a_line_that_is_not_json_are_still_sent_and_reported(sandbox, tmp_path):
    text = (
        lines_of([SCHEMA])
        + account_line(10)
        + "\n"
        + account_line(11)
        + "\nnot json at all\n"
        + account_line(12)
    )

    result = run_command(sandbox_config(sandbox), tmp_path, text + "\n")

    assert result.returncode == 1
    assert "line 4 is not valid JSON" in result.stderr
    assert [e["lookupKey"] for e in result.entries("accounts")] == ["c10.com", "c11.com"]
    assert all(e["success"] for e in result.entries("accounts"))
    assert set(sandbox.records("accounts")) == {"c10.com", "c11.com"}


def batch_message(*urls: str, compression: str | None = "gzip") -> dict:
    return {
        "type": "BATCH",
        "stream": "accounts",
        "encoding": {"format": "jsonl", "compression": compression},
        "manifest": list(urls),
    }


def test_batch_files_are_read_record_by_record_each_with_its_entry(sandbox, tmp_path):
    records = [{"crmAssociationId": f"B{n}", "domain": f"batch{n}.com"} for n in range(30)]
    plain = tmp_path / "part-1.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records[:10]) + "not json\n[1]\n")
    packed = tmp_path / "part-2.jsonl.gz"
    packed.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records[10:]).encode()))
    messages = [SCHEMA, batch_message(plain.as_uri(), compression=None), batch_message(packed.as_uri())]

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of(messages) + account_line(99) + "\n")

    assert result.returncode == 0, result.stderr
    entries = result.entries("accounts")
    assert [e["externalId"] for e in entries] == [f"B{n}" for n in range(10)] + [None, None] + [
        f"B{n}" for n in range(10, 30)
    ] + ["A99"]
    assert "line 11 is not valid JSON" in entries[10]["error"]
    assert "line 12 is a list, not an object" in entries[11]["error"]
    assert sum(e["success"] for e in entries) == 31
    assert len(sandbox.records("accounts")) == 31


def test_a_batch_file_that_cannot_be_read_stops_the_run_naming_it(sandbox, tmp_path):
    missing = (tmp_path / "gone.jsonl.gz").as_uri()

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([SCHEMA, batch_message(missing)]))

    assert result.returncode == 1
    assert f"line 2: the BATCH file {missing} cannot be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_batch_format_other_than_jsonl_stops_the_run_naming_it(sandbox, tmp_path):
    message = {**batch_message("file:///x.parquet"), "encoding": {"format": "parquet"}}

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([SCHEMA, message]))

    assert result.returncode == 1
    assert "BATCH files of format 'parquet' cannot be read" in result.stderr


@pytest.mark.parametrize("repair", [True, False])
def test_mojibake_is_fixed_only_when_repair_text_is_on(sandbox, tmp_path, repair):
    line = account_line(20, "CafÃ© MÃ¼nchen")

    result = run_command(
        sandbox_config(sandbox, repair_text=repair), tmp_path, lines_of([SCHEMA]) + line + "\n"
    )

    assert result.returncode == 0, result.stderr
    stored = sandbox.records("accounts")["c20.com"].record["name"]
    assert stored == ("Café München" if repair else "CafÃ© MÃ¼nchen")
    assert ("repair_text fixed mojibake in 1 text values" in result.stderr) is repair


def test_a_refused_record_never_stands_for_a_valid_one_nor_takes_its_outcome(sandbox, tmp_path):
    nan = '{"type": "RECORD", "stream": "accounts", "record": {"domain": "n.com", "name": NaN}}'
    null = '{"type": "RECORD", "stream": "accounts", "record": {"domain": "n.com", "name": null}}'
    for order in ([nan, null], [null, nan]):
        text = lines_of([SCHEMA]) + "\n".join(order) + "\n"

        result = run_command(sandbox_config(sandbox), tmp_path, text)

        outcomes = {
            ("NaN" in line): entry for line, entry in zip(order, result.entries("accounts"), strict=True)
        }
        assert outcomes[True]["success"] is False
        assert outcomes[False]["success"] is True
        assert result.state["summary"]["accounts"] == {"success": 1, "fail": 1, "existing": 0, "updated": 0}


def test_two_identical_bad_lines_each_fail_naming_their_own_line(sandbox, tmp_path):
    bad = {"type": "RECORD", "stream": "accounts", "record": None}

    result = run_command(sandbox_config(sandbox), tmp_path, lines_of([SCHEMA, bad, bad]))

    first, second = result.entries("accounts")
    assert first["error"].startswith("line 2:")
    assert second["error"].startswith("line 3:")
    assert result.state["summary"]["accounts"]["fail"] == 2


@pytest.mark.parametrize(("depth", "settings"), [(900, {}), (900, {"repair_text": True})])
def test_a_record_nested_hundreds_deep_with_text_to_repair_fails_alone(sandbox, tmp_path, depth, settings):
    deep = '{"type": "RECORD", "stream": "accounts", "record": {"domain": "d.com", "x": ' + "[" * depth
    deep += '"Caf\\u00c3\\u00a9 \\ud800"' + "]" * depth + "}}"

    result = run_command(
        sandbox_config(sandbox, **settings),
        tmp_path,
        lines_of([SCHEMA]) + deep + "\n" + account_line(8) + "\n",
    )

    assert_the_deep_record_failed_alone(result)


def test_batch_lines_are_repaired_like_record_lines(sandbox, tmp_path):
    batch = tmp_path / "part.jsonl"
    batch.write_bytes(
        b'{"domain": "b1.com", "name": "Caf\xff"}\n'
        b'{"domain": "b2.com", "name": "Bad \\ud800"}\n'
        b'{"domain": "b3.com", "name": NaN}\n'
    )

    result = run_command(
        sandbox_config(sandbox), tmp_path, lines_of([SCHEMA, batch_message(batch.as_uri(), compression=None)])
    )

    first, second, third = result.entries("accounts")
    assert (first["success"], second["success"], third["success"]) == (True, True, False)
    assert sandbox.records("accounts")["b1.com"].record["name"] == "Caf\ufffd"
    assert "the record holds NaN, which JSON does not allow" in third["error"]


@pytest.mark.parametrize(("depth", "fails"), [(190, False), (260, True)])
def test_the_nesting_limit_is_the_same_on_every_python(sandbox, tmp_path, depth, fails):
    nested = "[" * depth + '"x"' + "]" * depth
    line = '{"type": "RECORD", "stream": "accounts", "record": {"domain": "d.com", "x": ' + nested + "}}"

    result = run_command(
        sandbox_config(sandbox, validate_records=False),
        tmp_path,
        lines_of([SCHEMA]) + line + "\n" + account_line(8) + "\n",
    )

    if fails:
        assert_the_deep_record_failed_alone(result)
        assert "over 200 levels" in result.entries("accounts")[0]["error"]
    else:
        assert [entry["success"] for entry in result.entries("accounts")] == [True, True]
