"""The wire format is a contract: every golden transcript (tests/golden.py) is unchanged, message for message."""

from __future__ import annotations

import json

import pytest

import golden

FROZEN = json.loads(golden.PATH.read_text())


def test_every_case_is_frozen() -> None:
    assert sorted(FROZEN) == sorted(golden.CASES)


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_the_transcript_is_unchanged(name: str) -> None:
    got = golden.record(name)
    want = FROZEN[name]
    assert [m[:4] for m in got["messages"]] == [m[:4] for m in want["messages"]], "message kinds, parties or sizes"
    assert got["messages"] == want["messages"], "message bytes"
    assert {k: v for k, v in got.items() if k != "messages"} == {k: v for k, v in want.items() if k != "messages"}


def test_the_check_can_fail() -> None:
    """A transcript of another case differs: the comparison sees a change of rule, mode or data."""
    assert golden.record("krum@distances")["messages"] != FROZEN["mean@distances"]["messages"]


CLI = json.loads(golden.CLI_PATH.read_text())


@pytest.mark.parametrize("name", sorted(golden.CLI_CASES))
def test_the_cli_error_line_is_unchanged(name: str) -> None:
    got = golden.record_cli(name)
    assert got == CLI[name]
    assert got["exit_code"] == 2 and got["stderr"].count("\n") == 1
