"""The serial source over real pseudo-terminal pairs (the agent opens the slave with pyserial,
the test writes to the master as a device would): valid frames, wrong CRCs, binary noise, a
64 KiB line without newline, interleaved NMEA, and a port unplugged and plugged back in."""

from __future__ import annotations

import asyncio
import os
import random
import tty
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.attest.observation import verify_envelope
from agent.devices.codecs.frame import encode_frame
from agent.devices.codecs.nmea import encode_nmea
from agent.devices.codecs.serial_line import encode_serial_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, JournalStall, async_wait_until


class PtyDevice:
    """A device at the far end of a serial line: a pty pair whose slave is reached through a
    stable symlink, as udev's /dev/serial/by-id names are. `unplug` closes both ends (the
    agent's reads fail as on a USB unplug); `plug` makes a new pair behind the same link."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = self.slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline before pyserial configures it
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self.slave))
        os.replace(tmp, self.link)

    def unplug(self) -> None:
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1

    async def write(self, data: bytes) -> None:
        """Blocking writes in a thread: a pty buffer is small and the agent must keep reading."""

        def write_all() -> None:
            view = memoryview(data)
            while view:
                n = os.write(self.master, view[:4096])
                view = view[n:]

        await asyncio.to_thread(write_all)

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()


def serial_config(upstream: LocalMosquitto, link: Path) -> dict[str, Any]:
    return {
        "gateway": {"key_file": "gateway.key", "data_dir": "data", "chain_id": 31337},
        "sources": {
            "mqtt": {"enabled": False},
            "serial": {
                "ports": [
                    {"path": str(link), "baud": 115200, "device": "ser-1", "gps_device": "gps-1"}
                ]
            },
        },
        "bridge": {"url": upstream.url},
    }


def frame_line(n: int, device: str | None = None) -> bytes:
    return encode_serial_frame(
        encode_frame(n, [("temperature", 2000 + n, -2, "Cel")], device_id=device)
    )


def counters(collector: Collector, device: str) -> list[int]:
    return sorted(
        o["message"]["deviceCounter"]
        for o in collector.observations()
        if o["reading"]["device"] == device
    )


# A fix of a minute ago: the gateway refuses a time further off its clock (bad_time).
FIX = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
GGA = encode_nmea(f"GPGGA,{FIX:%H%M%S}.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
RMC = encode_nmea(
    f"GPRMC,{FIX:%H%M%S}.00,A,4807.038,N,01131.000,E,022.4,084.4,{FIX:%d%m%y},003.1,W"
)


async def test_valid_frames_survive_bad_crc_noise_a_64k_line_and_interleaved_nmea(
    tmp_path: Path, upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    dev = PtyDevice(tmp_path / "ttyUSB-test")
    try:
        running = await start_agent(serial_config(upstream_broker, dev.link))
        m = running.agent.metrics
        await async_wait_until(lambda: m.get("serial_opened") == 1, 10, "port opened")
        rng = random.Random(7)
        flipped = bytearray(frame_line(1000))
        flipped[12] ^= 0x04  # one bit on the wire
        stream = b"".join(
            [
                frame_line(1),
                bytes(flipped),  # wrong CRC: refused, never signed
                RMC,  # gives the date for the fixes that follow
                frame_line(2),
                rng.randbytes(3000) + b"\n",  # binary noise
                frame_line(3),
                b"x" * 65536 + b"\n",  # a 64 KiB line without newline until its end
                GGA,
                frame_line(4, "ser-1"),
                b"\x00\xff garbage glued to the front " + frame_line(5),  # resync on the line
                encode_nmea("GPGSV,1,1,00"),  # a valid sentence the agent does not use
                GGA[:20] + b"9" + GGA[21:],  # an NMEA sentence with a bad checksum
                frame_line(6, "intruder"),  # a device this port does not list
                frame_line(7),
            ]
        )
        await dev.write(stream)
        await async_wait_until(
            lambda: counters(collector, "ser-1") == [1, 2, 3, 4, 5, 7], 15, "valid frames"
        )
        # The RMC (before any GGA) gives a position; then the GGA gives the full fix.
        await async_wait_until(lambda: len(counters(collector, "gps-1")) == 7, 10, "GPS fixes")
        rmc_n, gga_n = sorted(set(counters(collector, "gps-1")))
        gps_obs = [o for o in collector.observations() if o["reading"]["device"] == "gps-1"]
        rmc = {o["reading"]["sensor"]: o for o in gps_obs if o["message"]["deviceCounter"] == rmc_n}
        gps = {o["reading"]["sensor"]: o for o in gps_obs if o["message"]["deviceCounter"] == gga_n}
        assert {k: v["reading"]["value"] for k, v in rmc.items()} == {
            "latitude": "48.1173000",
            "longitude": "11.5166667",
        }
        assert {k: v["reading"]["value"] for k, v in gps.items()} == {
            "latitude": "48.1173000",
            "longitude": "11.5166667",
            "altitude": "545.4",
            "fix_quality": "1",
            "satellites": "8",
        }
        # The fix time is the GGA's time of day on the RMC's date.
        assert {v["message"]["timestamp"] for v in gps.values()} == {int(FIX.timestamp())}
        for o in gps.values():
            assert verify_envelope(o).reading.transport == "serial"
        rejected = m.by_label("frames_rejected", "reason")
        assert rejected["bad_crc"] == 1 and rejected["overlong"] == 1
        assert rejected["bad_checksum"] == 1 and rejected["unknown_device"] == 1
        assert rejected.get("garbage", 0) >= 1
        assert m.get("serial_resync") == 1 and m.get("nmea_ignored") == 1
        assert m.get("serial_lost") == 0
    finally:
        dev.close()


async def test_a_port_unplugged_mid_line_is_reopened_and_no_valid_frame_is_lost(
    tmp_path: Path, upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    dev = PtyDevice(tmp_path / "ttyUSB-test")
    try:
        running = await start_agent(serial_config(upstream_broker, dev.link))
        m = running.agent.metrics
        source = running.agent.serial
        assert source is not None
        state = next(iter(source.ports.values()))
        await async_wait_until(lambda: m.get("serial_opened") == 1, 10, "port opened")
        await dev.write(b"".join(frame_line(n) for n in range(1, 6)) + frame_line(6)[:25])
        await async_wait_until(lambda: counters(collector, "ser-1") == [1, 2, 3, 4, 5], 10, "1-5")
        await async_wait_until(lambda: state.splitter.pending == 25, 10, "half a line read")
        dev.unplug()
        await async_wait_until(lambda: m.get("serial_lost") == 1, 10, "the loss noticed")
        dev.plug()
        await async_wait_until(lambda: m.get("serial_opened") == 2, 20, "port reopened")
        await dev.write(b"".join(frame_line(n) for n in range(7, 11)))
        await async_wait_until(
            lambda: counters(collector, "ser-1") == [1, 2, 3, 4, 5, 7, 8, 9, 10], 15, "7-10"
        )
        # The cut half line was forgotten with the old port, not glued to the new stream.
        assert m.get("frames_rejected") == 0
    finally:
        dev.close()


async def test_a_full_pipeline_pauses_reading_the_port_and_loses_nothing(
    tmp_path: Path, upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    dev = PtyDevice(tmp_path / "ttyUSB-test")
    try:
        cfg = serial_config(upstream_broker, dev.link)
        cfg["pipeline"] = {"queue_size": 16, "batch_max": 4}
        cfg["enrollment"] = {"rate": 100_000, "burst": 1000}  # a burst, not a rate test
        running = await start_agent(cfg)
        agent = running.agent
        await async_wait_until(lambda: agent.metrics.get("serial_opened") == 1, 10, "opened")
        stall = JournalStall(agent.cfg.journal.path)  # the journal's writes wait
        writing = asyncio.create_task(dev.write(b"".join(frame_line(n) for n in range(1, 301))))
        await async_wait_until(
            lambda: agent.metrics.get("source_paused", source="serial") > 0, 10, "paused"
        )
        stall.release()
        await writing
        await async_wait_until(
            lambda: counters(collector, "ser-1") == list(range(1, 301)), 20, "all 300 frames"
        )
        assert agent.metrics.get("frames_rejected") == 0
    finally:
        dev.close()
