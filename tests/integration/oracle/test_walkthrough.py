"""docs/dapp-developers.md's walk-through, run as written: its shell blocks (between the
walkthrough markers) in order, in one bash, in an empty directory, against a real anvil and a
real Mosquitto, with the installed `edgence-agent`. Only RPC and MQTT come from the test (the
walk-through reads them from the environment, with the usual local defaults)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agent.attest.keys import load_key_file
from agent.attest.vrfkey import vrf_public_key
from agent.chainclient.anvil import LocalAnvil
from agent.localbroker import LocalMosquitto

DOC = Path(__file__).resolve().parents[3] / "docs" / "dapp-developers.md"


def walkthrough_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 5, "the walk-through lost its command blocks"
    return "\n".join(blocks)


def test_the_walkthrough_reaches_a_verified_on_chain_value(
    anvil: LocalAnvil, local_broker: LocalMosquitto, contracts_built: Path, tmp_path: Path
) -> None:
    work = tmp_path / "walk"
    work.mkdir()
    script = (
        "set -euo pipefail\n"
        # The walk-through leaves the agent running in the background; stop it at the end.
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + walkthrough_script()
    )
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RPC": anvil.url,
        "MQTT": local_broker.url,
    }
    env.pop("EDGENCE_CONFIG", None)
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = work / "gw" / "agent.log"
    out = proc.stdout
    assert proc.returncode == 0, (
        out + proc.stderr + (log.read_text() if log.exists() else "(no agent log)")
    )
    # 1: addresses and the lines to paste.
    assert re.search(r"^ORACLE=0x[0-9a-f]{40}  # ObservationOracle", out, re.M), out
    assert "# Paste into each masternode's agent.toml:" in out and "[masternode]" in out
    # 2: the feed and its policy.
    assert "quorum 1, minimum assurance 0 (unauthenticated)" in out
    # 3: registered, with the VRF key derived from the gateway key (`keys` shows the same).
    assert "state         active" in out
    gw_key = load_key_file(work / "gw" / "gateway.key")
    assert f"vrf key       0x{vrf_public_key(gw_key).hex()}" in out
    # 5: the value on chain, and the verified observation behind it.
    assert re.search(r"^value        21\.37 Cel$", out, re.M), out
    assert re.search(r"^reporters    1 masternodes", out, re.M), out
    assert re.search(r"^ok signer=0x[0-9a-f]{40} seq=\d+ device=dev-1 sensor=temp", out, re.M)
    assert "assurance=0 (unauthenticated)" in out
    assert "answer: calldata is submit() of this observation to 0x" in out
