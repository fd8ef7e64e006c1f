"""Device counters in the journal: an enrolled device's under its id, an unauthenticated one's
per transport (`mqtt/dev-1`, agent.frame.counter_key), and forgotten on `devices reset-counter`,
also across a reopen. A real sqlite journal in a temporary directory."""

from __future__ import annotations

from pathlib import Path

from agent.journal import Journal, read_device_counter
from agent.model import AuthMethod, Observation, Reading, Transport

MAX = 2**64 - 1


def observation(
    seq: int, device: str, counter: int, transport: Transport, auth: AuthMethod
) -> Observation:
    reading = Reading(
        device_id=device,
        sensor="t",
        value=1,
        exponent=0,
        unit="Cel",
        timestamp=1_700_000_000,
        counter=counter,
        transport=transport,
        auth=auth,
    )
    return Observation(
        reading=reading,
        gateway_sequence=seq,
        gateway="0x" + "11" * 20,
        digest=bytes(32),
        signature=bytes(65),
        envelope=b'{"seq":%d}' % seq,
    )


async def test_counters_are_kept_per_transport_for_unauthenticated_devices(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    async with Journal(path, sinks=["bridge"]) as journal:
        seqs = await journal.next_sequences(4)
        await journal.append(
            [
                observation(seqs[0], "dev-1", MAX, Transport.MQTT, AuthMethod.ALLOWLIST),  # spoof
                observation(seqs[1], "dev-1", 5, Transport.SERIAL, AuthMethod.ALLOWLIST),
                observation(seqs[2], "hm-1", 9, Transport.MQTT, AuthMethod.HMAC),
                observation(seqs[3], "bt-1", 3, Transport.BLE, AuthMethod.BTHOME),
            ]
        )
        assert await journal.last_counters() == {
            "mqtt/dev-1": MAX,
            "serial/dev-1": 5,
            "hm-1": 9,
            "bt-1": 3,
        }
        assert await journal.forget_counters(["mqtt/dev-1", "nobody"]) == {"mqtt/dev-1": MAX}
    async with Journal(path, sinks=["bridge"]) as journal:
        assert await journal.last_counters() == {"serial/dev-1": 5, "hm-1": 9, "bt-1": 3}
    assert read_device_counter(path, "hm-1") == 9  # what `pair` continues an enrolled device at
