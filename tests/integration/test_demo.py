"""`edgence-agent demo` — the README's main command — runs end to end with real Mosquitto."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_shows_verified_observations_arriving_upstream_and_cleans_up() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "3", "--rate", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [
        ln
        for ln in out.stdout.splitlines()
        if re.match(r"  \d\d:\d\d:\d\d  seq .* ✓ signed by", ln)
    ]
    assert len(lines) >= 10, out.stdout[-2000:]
    # The header names every kind of line the demo prints, and the columns, latency included.
    assert "✓ signed by   an observation" in out.stdout
    assert "✗ refused     a frame the gateway did not sign" in out.stdout
    assert "dApp          a dApp's JSON-RPC request" in out.stdout
    assert "latency = sensor publish -> upstream" in out.stdout
    (columns,) = [ln for ln in out.stdout.splitlines() if ln.split()[:2] == ["time", "gw"]]
    assert columns.split()[-2:] == ["signature", "latency"]
    assert len(columns) == len(lines[0])  # the latency heading ends where the figures end
    assert {"temperature", "humidity", "pressure"} <= {ln.split()[4] for ln in lines}
    # The demo also tries an unknown device, a replayed frame and a forged one: all refused,
    # never signed.
    assert "✗ refused, not signed: unknown_device" in out.stdout
    assert "✗ refused, not signed: replay" in out.stdout
    # anvil is the embedded full node: a dApp request is forwarded, a node-control one refused.
    assert "dApp over MQTT 5: eth_chainId -> 0x7a69" in out.stdout
    assert "dApp over MQTT 5: anvil_setBalance ✗ refused" in out.stdout
    assert "✗ refused, not signed: bad_mac" in out.stdout
    summary = re.search(
        r"signed (\d+), delivered upstream (\d+), verified by the viewer (\d+), "
        r"failed verification (\d+)",
        out.stdout,
    )
    assert summary is not None, out.stdout[-1000:]
    signed, delivered, verified, failed = map(int, summary.groups())
    assert signed == delivered == verified and failed == 0 and signed >= 10
    workdir = re.search(r"work dir (\S+)\)", out.stdout)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
