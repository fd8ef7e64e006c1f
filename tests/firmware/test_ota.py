"""The firmware's side of an over-the-air update under real MicroPython (wasm) and CPython, on
commands framed by the agent's own encoder and manifests from agent/downlink/ota.py: blocks
checked and staged in order, the switch at the next boot, the confirmation, a replayed manifest
refused with nothing staged, and a version that never confirms rolled back after its boots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.downlink.codec import ArgValue, Command, encode_command, parse_answer, verify_answer
from agent.downlink.ota import (
    Manifest,
    begin_args,
    block_args,
    build_manifest,
    file_args,
    manifest_mac,
)
from tests.firmware.conftest import MP_TESTS, run_micropython

SCRIPT = MP_TESTS / "mp_ota.py"
KEY = bytes(range(32))
DEV = "dev-1"
NOW = 1_764_000_000
APP = "lib/edgence/app.py"
EXTRA = "lib/edgence/extra.py"
OLD_APP = "# the running app\n" * 10
NEW_APP = "".join(f"# app 0.2.0 line {i:03d}\n" for i in range(25))  # 575 bytes
BS = 200  # 3 blocks


class Steps:
    """Commands with the downlink counter the gateway would give them, 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.n = 0
        self.steps: list[list[Any]] = []
        self.labels: list[str] = []

    def cmd(self, label: str, action: str, args: dict[str, ArgValue]) -> int:
        self.n += 1
        c = Command(f"c{self.n}", DEV, action, args, NOW + 60, self.n)
        self.steps.append(["cmd", encode_command(KEY, c).decode()])
        self.labels.append(label)
        return self.n

    def other(self, label: str, *step: Any) -> None:
        self.steps.append(list(step))
        self.labels.append(label)

    def manifest(self, prefix: str, m: Manifest, mac_for: tuple[str, int] | None = None) -> int:
        """begin, one ota_file per file, ota_manifest: MAC for (device, session) given, else
        for this device and this begin's counter."""
        session = self.cmd(prefix + "begin", "ota_begin", dict(begin_args(m)))
        for k in range(len(m.files)):
            self.cmd(f"{prefix}file{k}", "ota_file", dict(file_args(m, k)))
        dev, n = mac_for or (DEV, session)
        self.cmd(prefix + "manifest", "ota_manifest", {"mac": manifest_mac(KEY, dev, n, m)})
        return session


def spec() -> dict[str, Any]:
    s = Steps()
    app = NEW_APP.encode()
    a = build_manifest("0.2.0", [(APP, app), (EXTRA, b"X = 1\n")], block_size=BS)
    assert [f.path for f in a.files] == [APP, EXTRA]
    s.cmd("status0", "ota_status", {})
    s.cmd("block_before_manifest", "ota_block", dict(block_args(0, 0, app[:200])))
    s.manifest("a_", a)
    s.cmd("b00", "ota_block", dict(block_args(0, 0, app[:200])))
    s.cmd("b02_early", "ota_block", dict(block_args(0, 2, app[400:])))
    bad = dict(block_args(0, 1, app[200:400]))
    bad["d0"] = ("B" if str(bad["d0"])[0] != "B" else "C") + str(bad["d0"])[1:]  # hash differs
    s.cmd("b01_bad_hash", "ota_block", bad)
    s.cmd("b01_oversize", "ota_block", dict(block_args(0, 1, app[200:440])))  # 240 > 200
    s.cmd("b01_short", "ota_block", dict(block_args(0, 1, app[200:399])))
    s.cmd("b01", "ota_block", dict(block_args(0, 1, app[200:400])))
    s.cmd("b01_again", "ota_block", dict(block_args(0, 1, app[200:400])))
    s.cmd("b02", "ota_block", dict(block_args(0, 2, app[400:])))
    s.cmd("status_staged", "ota_status", {})
    s.cmd("apply_early", "ota_apply", {})
    s.cmd("b10", "ota_block", dict(block_args(1, 0, b"X = 1\n")))
    s.other("files_staged", "files", [APP, EXTRA, "ota/new/" + APP, "ota/new/" + EXTRA])
    s.cmd("apply", "ota_apply", {})
    s.other("boot1", "boot")
    s.other("files_switched", "files", [APP, EXTRA, "ota/old/" + APP])
    s.cmd("begin_on_trial", "ota_begin", dict(begin_args(a)))
    s.other("boot2", "boot")
    s.other("confirm", "confirm")
    s.other("files_confirmed", "files", [APP, EXTRA, "ota/old/" + APP])
    # A replayed manifest: its MAC was made for an earlier session (counter) of this device.
    b = build_manifest("0.3.0", [(APP, b"raise RuntimeError\n")], boots=2)
    s.manifest("replay_", b, mac_for=(DEV, 2))
    s.cmd("status_after_replay", "ota_status", {})
    s.other("files_after_replay", "files", ["ota/new/" + APP])
    s.manifest("other_dev_", b, mac_for=("dev-2", s.n + 1))
    s.cmd("bad_path", "ota_begin", dict(begin_args(b)))
    s.cmd("bad_path_file", "ota_file", {"k": 0, "p": "boot.py", "s": 4, "h": "0" * 64})
    # A version that never confirms: rolled back after its 2 boots.
    s.manifest("b_", b)
    s.cmd("b_block", "ota_block", dict(block_args(0, 0, b"raise RuntimeError\n")))
    s.cmd("b_apply", "ota_apply", {})
    for i in range(3):
        s.other(f"b_boot{i + 1}", "boot")
    s.other("files_rolled_back", "files", [APP, EXTRA, "ota/old/" + APP])
    s.cmd("status_rolled_back", "ota_status", {})
    return {
        "key": KEY.hex(),
        "device": DEV,
        "flash": [[APP, OLD_APP], ["main.py", "# main\n"]],
        "steps": s.steps,
        "labels": s.labels,
    }


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ota") / "ota.json"
    p.write_text(json.dumps(spec()))
    return p


def labelled(run: dict[str, Any], spec_file: Path) -> dict[str, Any]:
    sp = json.loads(spec_file.read_text())
    out: dict[str, Any] = {}
    for label, step, got in zip(sp["labels"], sp["steps"], run["out"], strict=True):
        if step[0] == "cmd" and got is not None:
            ans = parse_answer(got.encode(), DEV)
            assert verify_answer(KEY, ans), got  # every answer authenticated with the device key
            got = (ans.status, dict(ans.result))
        out[label] = got
    out["resets"] = run["resets"]
    return out


@pytest.fixture(scope="module")
def on_micropython(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = run_micropython(SCRIPT, (spec_file, "/ota.json"))
    return labelled(json.loads(out.strip().splitlines()[-1]), spec_file)


def sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def test_micropython_and_cpython_stage_switch_and_roll_back_alike(
    on_micropython: Any, spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = {"FLASH": str(tmp_path), "SPEC": str(spec_file)}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), g)
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert labelled(run, spec_file) == on_micropython


def test_blocks_are_checked_and_staged_only_in_order(on_micropython: Any) -> None:
    r = on_micropython
    assert r["status0"] == ("ok", {"running": "0.1.0", "state": "none", "v": ""})
    assert r["block_before_manifest"][0] == "no_session"
    assert r["a_begin"] == ("ok", {"session": 3})
    assert r["a_manifest"] == ("ok", {"files": 2})
    assert r["b00"] == ("ok", {"k": 0, "next": 1})
    assert r["b02_early"][0] == "out_of_order"
    assert r["b01_bad_hash"][0] == "bad_block" and "sha-256" in r["b01_bad_hash"][1]["error"]
    assert r["b01_oversize"][0] == "oversize"
    assert r["b01_short"][0] == "bad_block"
    assert r["b01"] == ("ok", {"k": 0, "next": 2})
    assert r["b01_again"] == ("ok", {"k": 0, "next": 2})  # already staged: nothing written
    assert r["b02"] == ("ok", {"k": 1, "next": 0})  # the file is whole and its SHA-256 right
    staged = r["status_staged"][1]
    assert (staged["k"], staged["i"], staged["session"]) == (1, 0, 3)
    files = [(APP, NEW_APP.encode()), (EXTRA, b"X = 1\n")]
    assert staged["mh"] == build_manifest("0.2.0", files, block_size=BS).digest()
    assert r["apply_early"][0] == "incomplete"
    assert r["files_staged"] == [sha(OLD_APP), None, sha(NEW_APP), sha("X = 1\n")]


def test_the_update_switches_at_the_next_boot_and_is_kept_once_confirmed(
    on_micropython: Any,
) -> None:
    r = on_micropython
    assert r["apply"] == ("ok", {"version": "0.2.0"})
    assert r["resets"] == 2  # after each apply's answer went out
    assert r["boot1"] == ["trial", 1]
    assert r["files_switched"] == [sha(NEW_APP), sha("X = 1\n"), sha(OLD_APP)]
    assert r["begin_on_trial"][0] == "busy"  # one update at a time
    assert r["boot2"] == ["trial", 2]
    assert r["confirm"] == "ok"
    assert r["files_confirmed"] == [sha(NEW_APP), sha("X = 1\n"), None]


def test_a_replayed_or_misdirected_manifest_is_refused_and_stages_nothing(
    on_micropython: Any,
) -> None:
    r = on_micropython
    assert r["replay_manifest"][0] == "bad_manifest_mac"
    assert "nothing staged" in r["replay_manifest"][1]["error"]
    assert "session" not in r["status_after_replay"][1]
    assert r["files_after_replay"] == [None]
    assert r["other_dev_manifest"][0] == "bad_manifest_mac"
    assert r["bad_path_file"][0] == "bad_path"


def test_a_version_that_never_confirms_is_rolled_back_after_its_boots(on_micropython: Any) -> None:
    r = on_micropython
    assert r["b_apply"] == ("ok", {"version": "0.3.0"})
    assert [r[f"b_boot{i}"] for i in (1, 2, 3)] == [["trial", 1], ["trial", 2], ["rolled_back", 3]]
    # 0.2.0 is back (the previous version, not the first one); the file only 0.2.0 had stays.
    assert r["files_rolled_back"] == [sha(NEW_APP), sha("X = 1\n"), None]
    assert r["status_rolled_back"] == (
        "ok",
        {"running": "0.1.0", "state": "rolled_back", "v": "0.3.0"},
    )
