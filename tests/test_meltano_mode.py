"""Under Meltano (MELTANO_* variables set) the target forwards the tap's STATE unless state_output is set."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import account, lines_of, sandbox_config, schema
from tests.test_end_to_end import COMMAND, env_with, run_command

TAP_STATE = {"type": "STATE", "value": {"bookmarks": {"accounts": {"updatedAt": "2026-11-30"}}}}
ANNOUNCEMENT = "Running under Meltano: state_output singer"


def meltano_environment(tmp_path) -> dict[str, str]:
    """The variables Meltano 4.4 sets for a loader it runs (some of them)."""
    return {
        "MELTANO_PROJECT_ROOT": str(tmp_path),
        "MELTANO_ENVIRONMENT": "dev",
        "MELTANO_LOADER_NAME": "target-cbx1",
        "MELTANO_LOADER_NAMESPACE": "target_cbx1",
    }


def messages() -> str:
    return lines_of([schema("accounts"), account(1), account(2), TAP_STATE])


@pytest.mark.parametrize("variable", ["MELTANO_PROJECT_ROOT", "MELTANO_LOADER_NAME"])
def test_under_meltano_without_state_output_the_taps_state_is_printed(sandbox, tmp_path, variable):
    environment = {variable: meltano_environment(tmp_path)[variable]}

    result = run_command(sandbox_config(sandbox), tmp_path, messages(), env=environment)

    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [TAP_STATE["value"]]  # as Singer
    assert result.stderr.count(ANNOUNCEMENT) == 1
    assert len(sandbox.records("accounts")) == 2


def test_under_meltano_an_explicit_state_output_hotglue_prints_the_hotglue_line(sandbox, tmp_path):
    config = sandbox_config(sandbox, state_output="hotglue")

    result = run_command(config, tmp_path, messages(), env=meltano_environment(tmp_path))

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert [entry["success"] for entry in json.loads(line)["bookmarks"]["accounts"]] == [True, True]
    assert ANNOUNCEMENT not in result.stderr


def test_state_output_from_the_environment_counts_as_set(sandbox, tmp_path):
    settings = {f"TARGET_CBX1_{name.upper()}": str(value) for name, value in sandbox_config(sandbox).items()}
    environment = {**meltano_environment(tmp_path), **settings, "TARGET_CBX1_STATE_OUTPUT": "hotglue"}

    process = subprocess.run(
        [COMMAND, "--config", "ENV"],
        input=messages(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env_with(environment),
    )

    assert process.returncode == 0, process.stderr
    assert "bookmarks" in json.loads(process.stdout.splitlines()[-1])
    assert ANNOUNCEMENT not in process.stderr


def test_outside_meltano_the_default_is_still_the_hotglue_line(sandbox, tmp_path):
    result = run_command(sandbox_config(sandbox), tmp_path, messages())

    assert result.returncode == 0, result.stderr
    assert "bookmarks" in json.loads(result.stdout.splitlines()[-1])
    assert ANNOUNCEMENT not in result.stderr
