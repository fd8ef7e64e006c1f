"""The firmware's command handling under real MicroPython (wasm) and under CPython, on commands
framed by the agent's own encoder: answers verify with the agent's check, a replayed and a
forged command are refused, and the downlink counter survives a reboot (nothing runs twice)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.downlink.codec import Command, encode_command, parse_answer, verify_answer
from tests.firmware.conftest import MP_TESTS, run_micropython

SCRIPT = MP_TESTS / "mp_downlink.py"
KEY = bytes(range(32))
DEV = "dev-1"
NOW = 1_764_000_000


def cmd(n: int, action: str, args: dict[str, int | str], cid: str, exp: int = NOW + 60) -> str:
    return encode_command(KEY, Command(cid, DEV, action, args, exp, n)).decode()


def forged() -> str:
    obj = json.loads(cmd(9, "set_output", {"pin": 4, "value": 1}, "forged"))
    obj["mac"] = ("0" if obj["mac"][0] != "0" else "1") + obj["mac"][1:]
    return json.dumps(obj, separators=(",", ":"))


def spec() -> dict[str, Any]:
    return {
        "key": KEY.hex(),
        "device": DEV,
        "now": NOW,
        "before": [
            cmd(1, "set_output", {"pin": 2, "value": 1}, "c1"),
            cmd(1, "set_output", {"pin": 2, "value": 1}, "c1"),  # resent: same answer
            cmd(2, "version", {}, "c2"),
            cmd(3, "set_output", {"pin": 9, "value": 1}, "c3"),  # pin not allowed
            cmd(4, "fly", {}, "c4"),
            cmd(5, "boom", {}, "c5"),
            cmd(6, "version", {}, "c6", exp=NOW - 1),
            forged(),
            cmd(1, "set_output", {"pin": 2, "value": 0}, "c1-again"),  # replayed counter
            "",
            "not json",
        ],
        "after": [
            cmd(6, "version", {}, "c6", exp=NOW - 1),  # the last one again, after a reboot
            cmd(2, "version", {}, "c2"),
            cmd(7, "set_output", {"pin": 4, "value": 0}, "c7"),
        ],
    }


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("dl") / "cmds.json"
    p.write_text(json.dumps(spec()))
    return p


@pytest.fixture(scope="module")
def on_micropython(spec_file: Path) -> Any:
    return json.loads(run_micropython(SCRIPT, (spec_file, "/cmds.json")).strip().splitlines()[-1])


def run_on_cpython(spec_file: Path, flash: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    g = {"FLASH": str(flash), "CMDS": str(spec_file)}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), g)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def statuses(answers: list[str | None]) -> list[str | None]:
    out: list[str | None] = []
    for a in answers:
        if a is None:
            out.append(None)
            continue
        ans = parse_answer(a.encode(), DEV)
        assert verify_answer(KEY, ans), a  # every answer is authenticated with the device key
        out.append(ans.status)
    return out


def test_micropython_and_cpython_answer_byte_for_byte_alike(
    on_micropython: Any, spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_on_cpython(spec_file, tmp_path, capsys) == on_micropython


def test_each_command_is_answered_authenticated_with_its_handlers_status(
    on_micropython: Any,
) -> None:
    assert statuses(on_micropython["before"]) == [
        "ok", "ok", "ok", "bad_args", "unknown_action", "failed", "expired",
        None, "replay", None, None,
    ]  # fmt: skip
    first = parse_answer(on_micropython["before"][0].encode(), DEV)
    assert (first.command_id, first.counter, dict(first.result)) == (
        "c1",
        1,
        {"pin": 2, "value": 1},
    )
    version = parse_answer(on_micropython["before"][2].encode(), DEV)
    assert dict(version.result) == {"version": "0.1.0"}


def test_a_resent_command_gets_the_same_answer_and_is_not_run_again(on_micropython: Any) -> None:
    assert on_micropython["before"][0] == on_micropython["before"][1]
    assert on_micropython["executed"][0] == 2  # c1 once, c2; not the resend, not the refused


def test_a_forged_command_is_dropped_unanswered_and_counted(on_micropython: Any) -> None:
    assert on_micropython["before"][7] is None
    assert on_micropython["refused"][0] == 2  # the forgery and the non-JSON payload
    assert on_micropython["pins"] == {"2": 1, "4": 0}  # the forgery's value 1 never set pin 4


def test_the_downlink_counter_survives_a_reboot_and_old_commands_stay_refused(
    on_micropython: Any,
) -> None:
    assert on_micropython["last_after_reboot"] == 6
    assert statuses(on_micropython["after"]) == ["duplicate", "replay", "ok"]
    assert on_micropython["executed"][1] == 1
