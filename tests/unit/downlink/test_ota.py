"""The update as commands (agent/downlink/ota.py): the manifest's canonical bytes and MAC, blocks
as command arguments, and the update driven against the firmware's own code (edgence.ota and
edgence.downlink on CPython, in a temporary flash directory) through the real command codec."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.downlink.codec import (
    ArgValue,
    Command,
    check_args,
    encode_command,
    parse_answer,
    verify_answer,
)
from agent.downlink.ota import (
    MAX_BLOCK,
    block_args,
    blocks,
    build_manifest,
    manifest_canonical,
    manifest_mac,
)
from agent.downlink.otaupdate import Updater

KEY = bytes(range(32))
DEV = "dev-1"


def test_the_manifest_canonical_bytes_bind_device_session_and_every_file() -> None:
    m = build_manifest("0.2.0", [("main.py", b"print(1)\n"), ("lib/a.py", b"")], block_size=64)
    sha_main = hashlib.sha256(b"print(1)\n").hexdigest()
    sha_empty = hashlib.sha256(b"").hexdigest()
    assert manifest_canonical(DEV, 7, m) == (
        b"EDGENCE-OTA-1\ndev-1\n7\n0.2.0\n64\n3\n"
        + f"lib/a.py\t0\t{sha_empty}\nmain.py\t9\t{sha_main}\n".encode()
    )
    mac = manifest_mac(KEY, DEV, 7, m)
    assert mac == hmac.new(KEY, manifest_canonical(DEV, 7, m), "sha256").hexdigest()
    assert mac != manifest_mac(KEY, DEV, 8, m) != manifest_mac(KEY, "dev-2", 7, m)
    head = len(b"EDGENCE-OTA-1\ndev-1\n7\n")
    assert m.digest() == hashlib.sha256(manifest_canonical(DEV, 7, m)[head:]).hexdigest()


def test_a_block_fits_a_commands_arguments_and_decodes_to_its_bytes() -> None:
    data = os.urandom(MAX_BLOCK)
    args = block_args(2, 5, data)
    assert check_args(args) == args  # the command codec's own rules: 8 args of <= 64 chars
    text = "".join(str(args[f"d{j}"]) for j in range(5))
    assert base64.b64decode(text) == data
    assert args["h"] == hashlib.sha256(data).hexdigest()


def test_blocks_cover_every_file_in_order_from_any_point() -> None:
    a, b = os.urandom(500), os.urandom(100)
    m = build_manifest("1", [("lib/a.py", a), ("lib/b.py", b)], block_size=200)
    got = list(blocks(m, {"lib/a.py": a, "lib/b.py": b}))
    assert [(k, i) for k, i, _ in got] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert b"".join(d for k, _, d in got if k == 0) == a
    assert [(k, i) for k, i, _ in blocks(m, {"lib/a.py": a, "lib/b.py": b}, 0, 2)] == [
        (0, 2),
        (1, 0),
    ]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Any]:
    """The firmware's command handling and staging (its real code, on CPython) in a flash
    directory of its own."""
    from edgence.downlink import Downlink, standard_handlers

    class Cfg:
        key, device_id = KEY, DEV
        firmware: dict[str, Any] = {}  # noqa: RUF012

    class Machine:
        resets = 0

        def reset(self) -> None:
            Machine.resets += 1

    class Node:
        cfg = Cfg

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        node = Node()
        node.downlink = Downlink(Cfg, {}, ".")  # type: ignore[attr-defined]
        node.downlink.handlers = standard_handlers(node, Machine(), "0.1.0")  # type: ignore[attr-defined]
        node.machine = Machine  # type: ignore[attr-defined]
        yield node
    finally:
        os.chdir(cwd)


class Interrupted(Exception):
    """The operator's Ctrl-C in the middle of a transfer."""


class Gateway:
    """What the command service does for each step: a counter, the frame, the answer checked.
    `corrupt`: counters whose block goes out with a wrong hash (a sender's bug: the MAC is
    right); `stop_after`: the operator interrupts after that many block answers."""

    def __init__(self, node: Any) -> None:
        self.node, self.n = node, 0
        self.sent: list[str] = []
        self.corrupt: set[int] = set()
        self.stop_after: int | None = None

    async def send(self, action: str, args: Mapping[str, ArgValue], ttl: float) -> dict[str, Any]:
        if self.stop_after is not None and self.sent.count("ota_block") >= self.stop_after:
            raise Interrupted
        self.n += 1
        args = dict(args)
        if action == "ota_block" and self.n in self.corrupt:  # a sender's bug, MAC intact
            args["h"] = "0" * 64
        cmd = Command(f"c{self.n}", DEV, action, args, 2**40, self.n)
        raw = self.node.downlink.handle(encode_command(KEY, cmd))
        self.node.downlink.run_after()
        ans = parse_answer(raw, DEV)
        assert verify_answer(KEY, ans)
        self.sent.append(action)
        out: dict[str, Any] = {"ok": ans.ok, "status": ans.status, "result": dict(ans.result)}
        if not ans.ok:
            out["error"], out["detail"] = ans.status, f"the device answered {ans.status!r}"
        return out


def test_an_update_is_staged_and_applied_and_a_refused_block_is_sent_again(device: Any) -> None:
    data = os.urandom(1000)
    m = build_manifest("0.2.0", [("lib/edgence/app.py", data)], block_size=200)
    gw = Gateway(device)
    gw.corrupt = {7}  # status, begin, file, manifest, block 0, 1, then block 2 "corrupted"
    lines: list[str] = []
    up = Updater(gw.send, KEY, DEV, m, {"lib/edgence/app.py": data}, progress=lines.append)
    res = asyncio.run(up.run(None))
    assert (res.state, res.blocks, res.resent, res.resumed) == ("staged", 5, 1, False)
    assert any("block refused (bad_block)" in line for line in lines)
    assert device.machine.resets == 1  # restarts after answering ota_apply
    assert Path("ota/new/lib/edgence/app.py").read_bytes() == data
    assert gw.sent.count("ota_block") == 6


def test_a_second_run_resumes_from_the_devices_next_block(device: Any) -> None:
    data = os.urandom(1000)
    m = build_manifest("0.2.0", [("lib/edgence/app.py", data)], block_size=200)
    gw = Gateway(device)
    gw.stop_after = 2
    first = Updater(gw.send, KEY, DEV, m, {"lib/edgence/app.py": data})
    with pytest.raises(Interrupted):
        asyncio.run(first.run(None))
    gw.stop_after = None
    up = Updater(gw.send, KEY, DEV, m, {"lib/edgence/app.py": data})
    res = asyncio.run(up.run(None))
    assert res.resumed and res.blocks == 3  # blocks 2, 3, 4 only
    assert gw.sent.count("ota_begin") == 1
