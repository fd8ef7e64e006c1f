"""Hostile update steps against the firmware under real MicroPython (wasm), framed by the agent's
own encoder: a replayed manifest, blocks for another device, oversize blocks and manifests,
blocks and files out of order. Each is refused (unanswered when its MAC fails, else with its
status) and nothing reaches the staging directory; the agent refuses to build the same."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.downlink.codec import Command, encode_command
from agent.downlink.ota import (
    OtaError,
    begin_args,
    block_args,
    build_manifest,
    file_args,
    manifest_mac,
)
from tests.firmware.conftest import run_micropython
from tests.firmware.test_ota import DEV, KEY, NOW, SCRIPT, Steps, labelled

OTHER = "dev-2"
OTHER_KEY = bytes(range(32, 64))
APP = "lib/edgence/app.py"
DATA = bytes(range(256)) * 2  # 512 bytes: 3 blocks of 200
BS = 200


def spec() -> dict[str, Any]:
    s = Steps()
    m = build_manifest("0.9.0", [(APP, DATA), ("lib/edgence/x.py", b"x = 1\n")], block_size=BS)
    # Oversize manifests: too many files, a file too large, too much in all.
    s.cmd("begin_33_files", "ota_begin", {**begin_args(m), "count": 33})
    s.cmd("begin_block_241", "ota_begin", {**begin_args(m), "bs": 241})
    s.cmd("begin_big", "ota_begin", {**begin_args(m), "count": 5})
    s.cmd("file_too_large", "ota_file", {"k": 0, "p": APP, "s": 65537, "h": "0" * 64})
    for k in range(4):
        s.cmd(f"big_{k}", "ota_file", {"k": k, "p": f"lib/b{k}.py", "s": 65536, "h": "0" * 64})
    s.cmd("too_much_in_all", "ota_file", {"k": 4, "p": "lib/b4.py", "s": 1, "h": "0" * 64})
    # Files out of order, then the genuine manifest.
    session = s.cmd("begin", "ota_begin", dict(begin_args(m)))
    s.cmd("file_1_first", "ota_file", dict(file_args(m, 1)))
    s.cmd("file_0", "ota_file", dict(file_args(m, 0)))
    s.cmd("file_1", "ota_file", dict(file_args(m, 1)))
    s.cmd("file_again", "ota_file", dict(file_args(m, 1)))
    s.cmd("manifest", "ota_manifest", {"mac": manifest_mac(KEY, DEV, session, m)})
    recorded = s.steps[-1]
    # Blocks out of order: a later block, a block of the second file first.
    s.cmd("block_1_first", "ota_block", dict(block_args(0, 1, DATA[BS : 2 * BS])))
    # The manifest command recorded and sent again: its counter is spent.
    s.other("manifest_replayed", *recorded)
    s.cmd("file_1_block_first", "ota_block", dict(block_args(1, 0, b"x = 1\n")))
    # An oversize block: more bytes than the manifest's block size (240 fit in a command).
    s.cmd("block_oversize", "ota_block", dict(block_args(0, 0, DATA[:240])))
    # Blocks for another device: framed with its key, or with this key for its id (a frame
    # copied from its topic). Neither verifies here: dropped unanswered.
    n = s.n + 1
    for label, key, dev in (("other_key", OTHER_KEY, OTHER), ("other_id", KEY, OTHER)):
        c = Command(f"x{n}", dev, "ota_block", block_args(0, 0, DATA[:BS]), NOW + 60, n)
        s.other(label, "cmd", encode_command(key, c).decode())
    s.other("staged_before", "files", ["ota/new/" + APP, "ota/new/lib/edgence/x.py"])
    s.cmd("block_0", "ota_block", dict(block_args(0, 0, DATA[:BS])))
    s.other("staged_after", "files", ["ota/new/" + APP])
    # A manifest recorded from this session, replayed in a new one: bound to the old counter.
    again = s.cmd("begin_again", "ota_begin", dict(begin_args(m)))
    s.cmd("again_0", "ota_file", dict(file_args(m, 0)))
    s.cmd("again_1", "ota_file", dict(file_args(m, 1)))
    s.cmd("old_mac", "ota_manifest", {"mac": manifest_mac(KEY, DEV, session, m)})
    assert again != session
    s.other("staged_at_end", "files", ["ota/new/" + APP, "ota/session"])
    return {"key": KEY.hex(), "device": DEV, "flash": [], "steps": s.steps, "labels": s.labels}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    p = tmp_path_factory.mktemp("ota-hostile") / "ota.json"
    p.write_text(json.dumps(spec()))
    out = run_micropython(SCRIPT, (p, "/ota.json"))
    return labelled(json.loads(out.strip().splitlines()[-1]), p)


def status(r: dict[str, Any], label: str) -> str:
    got = r[label]
    assert got is not None, f"{label}: dropped unanswered"
    return str(got[0])


def test_oversize_manifests_are_refused(hostile: dict[str, Any]) -> None:
    assert status(hostile, "begin_33_files") == "bad_args"
    assert status(hostile, "begin_block_241") == "bad_args"
    assert status(hostile, "file_too_large") == "bad_args"
    assert [status(hostile, f"big_{k}") for k in range(4)] == ["ok"] * 4
    assert status(hostile, "too_much_in_all") == "oversize"


def test_files_and_blocks_out_of_order_are_refused_and_write_nothing(
    hostile: dict[str, Any],
) -> None:
    assert status(hostile, "file_1_first") == "out_of_order"
    assert (status(hostile, "file_0"), status(hostile, "file_1")) == ("ok", "ok")
    assert status(hostile, "file_again") == "out_of_order"
    assert status(hostile, "manifest") == "ok"
    assert status(hostile, "block_1_first") == "out_of_order"
    assert status(hostile, "file_1_block_first") == "out_of_order"
    assert status(hostile, "block_oversize") == "oversize"
    assert hostile["staged_before"] == [None, None]
    assert hostile["block_0"] == ("ok", {"k": 0, "next": 1})
    assert hostile["staged_after"][0] is not None


def test_a_replayed_manifest_is_refused(hostile: dict[str, Any]) -> None:
    # The same command again: its downlink counter is spent, it is not run again.
    assert status(hostile, "manifest_replayed") == "replay"
    # The same manifest MAC in a new session: bound to the old session's counter.
    assert status(hostile, "old_mac") == "bad_manifest_mac"
    assert hostile["staged_at_end"] == [None, None]  # session and staging dropped


def test_blocks_for_another_device_are_dropped_unanswered(hostile: dict[str, Any]) -> None:
    assert hostile["other_key"] is None and hostile["other_id"] is None


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ([(f"lib/f{i}.py", b"") for i in range(33)], "oversize"),
        ([("lib/big.py", b"\0" * 65537)], "oversize"),
        ([(f"lib/f{i}.py", b"\0" * 65536) for i in range(5)], "oversize"),
        ([("boot.py", b"")], "bad_path"),
        ([("lib/otaboot.py", b"")], "bad_path"),
        ([("config.json", b"{}")], "bad_path"),
        ([("lib/../boot.py", b"")], "bad_path"),
        ([("/main.py", b"")], "bad_path"),
        ([("ota/boot", b"")], "bad_path"),
        ([("lib/x.txt", b"")], "bad_path"),
    ],
)
def test_the_agent_refuses_to_build_a_manifest_the_device_would_refuse(
    files: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(OtaError) as e:
        build_manifest("1.0.0", files)
    assert e.value.reason == reason


def test_the_agent_refuses_an_oversize_block_or_block_size() -> None:
    with pytest.raises(OtaError, match="oversize"):
        block_args(0, 0, b"\0" * 241)
    with pytest.raises(OtaError, match="oversize"):
        build_manifest("1.0.0", [("main.py", b"")], block_size=241)
