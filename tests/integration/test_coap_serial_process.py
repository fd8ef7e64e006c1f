"""CoAP and serial in the installed command (`edgence-agent run`, on uvloop when installed):
both sources start from the TOML file, take readings, and stop cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import tty
from pathlib import Path
from typing import Any

from agent.attest.observation import verify_envelope
from agent.devices.codecs.frame import encode_frame
from agent.devices.codecs.serial_line import encode_serial_frame
from agent.localbroker import LocalMosquitto

from .conftest import AgentProcess, Collector, wait_until, write_agent_dir
from .test_coap_source import free_udp_port


def test_the_agent_process_serves_coap_and_reads_a_serial_port_then_stops_on_sigterm(
    tmp_path: Path, upstream_broker: LocalMosquitto, collector: Collector, agent_process: Any
) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    port = free_udp_port()
    cfg, key = write_agent_dir(
        tmp_path / "etc",
        {
            "gateway": {"key_file": "gateway.key", "data_dir": "data"},
            "sources": {
                "mqtt": {"enabled": False},
                "coap": {
                    "enabled": True,
                    "bind": "127.0.0.1",
                    "port": port,
                    "allowed_devices": ["c-1"],
                },
            },
            "bridge": {"url": upstream_broker.url},
        },
    )
    # Arrays of tables are beyond the test TOML writer: appended by hand.
    cfg.write_text(
        cfg.read_text()
        + f'\n[[sources.serial.ports]]\npath = "{os.ttyname(slave)}"\ndevice = "s-1"\n'
    )
    proc: AgentProcess = agent_process(cfg)
    try:
        proc.start()
        out = subprocess.run(
            ["coap-client-notls", "-m", "post", "-t", "50", "-e",
             encode_frame(1, [("t", 215, -1, "Cel")]).decode(), f"coap://127.0.0.1:{port}/up/c-1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0 and "4." not in out.stdout + out.stderr, out
        os.write(master, encode_serial_frame(encode_frame(1, [("t", 9, 0, "Cel")])))
        wait_until(lambda: len(collector.raw_observations()) == 2, 15, "both readings upstream")
        got = sorted(
            (v.reading.device_id, v.reading.transport.value)
            for v in (verify_envelope(p) for _, p in collector.raw_observations())
        )
        assert got == [("c-1", "coap"), ("s-1", "serial")]
        assert all(
            verify_envelope(p).signer == key.address for _, p in collector.raw_observations()
        )
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "event=stopped" in proc.log_text()
        assert "sources=coap,serial" in proc.log_text()
    finally:
        os.close(master)
        os.close(slave)
