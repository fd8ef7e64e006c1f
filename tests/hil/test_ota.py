"""Over-the-air updates end to end on the rig: the real agent with [downlink] on, Mosquitto with
the ACL `pair` writes, the firmware on the board, `edgence-agent firmware update` as the operator
runs it. A good update is confirmed by the new version; a block corrupted on its way is refused
and sent again; an interrupted update resumes where the device is; a manifest whose MAC does not
verify stages nothing; a version that crashes at boot is rolled back to the previous one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import BrokerEndpoint
from agent.downlink.client import CommandClient
from agent.downlink.ota import begin_args, build_manifest, file_args, manifest_mac
from tests.firmware.conftest import FIRMWARE
from tests.hil.boards import Board, EmulatedBoard
from tests.hil.conftest import Gateway, sensor_args, settings_for
from tests.hil.test_commands import enable_downlink
from tests.integration.conftest import wait_until
from tests.integration.test_enrollment import AGENT_USER
from tests.support.mqttfault import CorruptingProxy

pytestmark = pytest.mark.timeout(240)

INIT = "lib/edgence/__init__.py"


def new_version(tmp: Path, version: str, *, crash: bool = False) -> Path:
    """A firmware directory with `version`: the package's __init__ (the version it reports; one
    that raises at import when `crash`) and app.py (so the update spans many blocks)."""
    src = tmp / f"fw-{version}"
    init = (FIRMWARE / INIT).read_text().replace('VERSION = "0.1.0"', f'VERSION = "{version}"')
    assert version in init
    if crash:
        init += '\nraise RuntimeError("this version crashes at boot")\n'
    app = (FIRMWARE / "lib/edgence/app.py").read_text() + f"\n# {version}\n"
    for rel, text in ((INIT, init), ("lib/edgence/app.py", app)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


def bring_up(gateway: Gateway, board: Board, device: str, port: int | None = None) -> None:
    enable_downlink(gateway)
    bundle = gateway.pair(device, *sensor_args(board), **settings_for(board, watchdog_s=5))
    if port is not None:
        bundle["mqtt"]["port"] = port
    board.deploy(json.dumps(bundle).encode())
    gateway.agent.start()
    board.power_on()
    wait_until(lambda: len(gateway.observations(device)) >= 2, 30, "readings from the board")


def firmware(gateway: Gateway, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "firmware", *args, "--config", str(gateway.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def finish(p: subprocess.Popen[str], timeout: float = 200) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def status(gateway: Gateway, device: str) -> dict[str, Any]:
    rc, out, err = finish(firmware(gateway, "status", device))
    assert rc == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def flash(board: Board) -> Path:
    assert isinstance(board, EmulatedBoard)
    return Path(board.flash)


@pytest.mark.needs("deploy", "mqtt")
def test_a_good_update_is_staged_switched_and_confirmed_by_the_new_version(
    gateway: Gateway, board: Board, tmp_path: Path
) -> None:
    bring_up(gateway, board, "ota-1")
    src = new_version(tmp_path, "0.2.0")
    rc, out, err = finish(firmware(gateway, "update", "ota-1", "--source", str(src), "--wait"))
    assert rc == 0, out + err
    assert "manifest accepted" in out and "done: ota-1 runs 0.2.0, confirmed" in out
    assert status(gateway, "ota-1") == {"running": "0.2.0", "state": "ok", "v": "0.2.0"}
    console = board.console()
    assert "event=ota_switched" in console
    assert "event=ota_confirmed boots=1 version=0.2.0" in console
    n = len(gateway.observations("ota-1"))
    wait_until(lambda: len(gateway.observations("ota-1")) > n, 30, "readings from 0.2.0")
    if isinstance(board, EmulatedBoard):
        for rel in (INIT, "lib/edgence/app.py"):
            assert (flash(board) / rel).read_bytes() == (src / rel).read_bytes()
        assert not list((flash(board) / "ota").rglob("*.py"))  # nothing staged or kept


@pytest.mark.needs("deploy", "mqtt")
def test_a_block_corrupted_on_its_way_is_refused_and_sent_again(
    gateway: Gateway, board: Board, tmp_path: Path
) -> None:
    with CorruptingProxy(gateway.devices.broker.port, b'"a":"ota_block"', b'"i":3,') as proxy:
        bring_up(gateway, board, "ota-2", port=proxy.port)
        src = new_version(tmp_path, "0.2.1")
        rc, out, err = finish(firmware(gateway, "update", "ota-2", "--source", str(src), "--wait"))
        assert proxy.corrupted == 1
    assert rc == 0, out + err
    assert "done: ota-2 runs 0.2.1, confirmed" in out
    # The changed block failed its MAC on the device: dropped unanswered, counted; the agent's
    # resend of the same command then went through.
    assert "event=command_refused reason=bad_mac" in board.console()


@pytest.mark.needs("deploy", "mqtt")
def test_an_interrupted_update_resumes_where_the_device_is(
    gateway: Gateway, board: Board, tmp_path: Path
) -> None:
    bring_up(gateway, board, "ota-3")
    src = new_version(tmp_path, "0.3.0")
    p = firmware(gateway, "update", "ota-3", "--source", str(src))
    wait_until(lambda: board.console().count("action=ota_block status=ok") >= 5, 60, "five blocks")
    p.kill()
    p.wait()
    rc, out, err = finish(firmware(gateway, "update", "ota-3", "--source", str(src), "--wait"))
    assert rc == 0, out + err
    assert "resuming: the device has the manifest" in out
    assert "done: ota-3 runs 0.3.0, confirmed" in out
    assert board.console().count("event=ota_begin") == 1  # the manifest was not sent again


@pytest.mark.needs("deploy", "mqtt")
def test_a_manifest_whose_mac_does_not_verify_stages_nothing(
    gateway: Gateway, board: Board, tmp_path: Path
) -> None:
    bring_up(gateway, board, "ota-4")
    files = [(INIT, (new_version(tmp_path, "0.4.0") / INIT).read_bytes())]
    m = build_manifest("0.4.0", files)

    async def as_operator() -> list[dict[str, Any]]:
        ep = BrokerEndpoint(
            "127.0.0.1", gateway.devices.broker.port, username=AGENT_USER,
            password_file=gateway.devices.agent_password_file, protocol=5,
        )  # fmt: skip
        async with CommandClient(ep, "edgence", gateway.key.address, "operator") as c:

            async def send(action: str, args: dict[str, Any]) -> dict[str, Any]:
                return await c.send({"device": "ota-4", "action": action, "args": args}, 70)

            begun = await send("ota_begin", dict(begin_args(m)))
            session = begun["result"]["session"]
            await send("ota_file", dict(file_args(m, 0)))
            # Made for the session before (a replayed manifest): same key, same files.
            mac = manifest_mac(device_key(gateway, "ota-4"), "ota-4", session - 1, m)
            refused = await send("ota_manifest", {"mac": mac})
            after = await send("ota_status", {})
            return [refused, after]

    refused, after = asyncio.run(as_operator())
    assert refused["ok"] is False and refused["status"] == "bad_manifest_mac"
    assert "nothing staged" in refused["result"]["error"]
    assert after["result"] == {"running": "0.1.0", "state": "none", "v": ""}  # no session
    assert "event=ota_refused reason=bad_manifest_mac total=1" in board.console()
    if isinstance(board, EmulatedBoard):
        assert not (flash(board) / "ota" / "new").exists()


def device_key(gateway: Gateway, device: str) -> bytes:
    from agent.config import load_config
    from agent.devices.registry import DeviceRegistry

    key = DeviceRegistry(load_config(gateway.config).enrollment.registry_dir).key_of(device)
    assert key is not None
    return key


@pytest.mark.needs("deploy", "mqtt", "power_cycle")
def test_a_version_that_crashes_at_boot_is_rolled_back_to_the_previous_one(
    gateway: Gateway, board: Board, tmp_path: Path
) -> None:
    bring_up(gateway, board, "ota-5")
    src = new_version(tmp_path, "0.5.0", crash=True)
    rc, out, err = finish(firmware(gateway, "update", "ota-5", "--source", str(src), "--wait"))
    assert rc == 1, out + err
    assert "rolled_back: ota-5 did not confirm 0.5.0 within 3 boots and runs 0.1.0 again" in err
    console = board.console()
    assert console.count("event=ota_boot_failed error=RuntimeError version=0.5.0") == 3
    assert "event=ota_rolled_back boots=3 to=0.1.0 version=0.5.0" in console
    assert status(gateway, "ota-5") == {"running": "0.1.0", "state": "rolled_back", "v": "0.5.0"}
    n = len(gateway.observations("ota-5"))
    wait_until(lambda: len(gateway.observations("ota-5")) > n, 30, "readings after the rollback")
    if isinstance(board, EmulatedBoard):
        assert (flash(board) / INIT).read_bytes() == (FIRMWARE / INIT).read_bytes()


DOC = Path(__file__).resolve().parents[2] / "docs" / "ota.md"


def walkthrough_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "the walk-through lost its command blocks"
    return "set -euo pipefail\n" + "\n".join(blocks)


@pytest.mark.needs("deploy", "mqtt")
def test_the_walkthrough_updates_the_device_as_written(
    gateway: Gateway, board: Board, tmp_path: Path
) -> None:
    bring_up(gateway, board, "greenhouse-1")
    work = tmp_path / "walk"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "EDGENCE_CONFIG": str(gateway.config),
        "FIRMWARE": str(FIRMWARE),
    }
    proc = subprocess.run(
        ["bash", "-c", walkthrough_script()],
        cwd=work, env=env, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    doc = DOC.read_text(encoding="utf-8")
    # The output the page shows is what the commands print.
    for line in out.splitlines():
        assert line in doc, f"{line!r} is not in {DOC.name}:\n{out}"
    assert "done: greenhouse-1 runs 0.2.0, confirmed" in out
    assert '{"running": "0.2.0", "state": "ok", "v": "0.2.0"}' in out
