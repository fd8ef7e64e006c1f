"""The downlink's store on a real sqlite file: commands survive a reopen (a restart), a
command's counter is assigned once and counters never repeat, an id or a contract event is
queued once, a command is closed once."""

from __future__ import annotations

from pathlib import Path

from agent.downlink.store import CommandStore, StoredCommand


def cmd(cid: str, device: str = "dev-1") -> StoredCommand:
    return StoredCommand(
        cid, device, "version", {"a": 1}, "operator", 100, 200, None, "queued", None
    )


async def test_commands_and_counters_survive_a_reopen(tmp_path: Path) -> None:
    async with CommandStore(tmp_path / "d.sqlite") as s:
        await s.add(cmd("c1"))
        await s.add(cmd("c2"))
        await s.add(cmd("x1", "dev-2"))
        assert (await s.assign_counter("c1")).counter == 1
        assert (await s.assign_counter("c1")).counter == 1  # a resend: the same counter
        assert (await s.assign_counter("x1")).counter == 1  # counters are per device
    async with CommandStore(tmp_path / "d.sqlite") as s:
        open_ = await s.open_commands()
        assert [(c.command_id, c.counter, c.state) for c in open_] == [
            ("c1", 1, "sent"), ("c2", None, "queued"), ("x1", 1, "sent"),
        ]  # fmt: skip
        assert (await s.assign_counter("c2")).counter == 2


async def test_an_id_or_an_event_is_queued_once_and_closed_once(tmp_path: Path) -> None:
    async with CommandStore(tmp_path / "d.sqlite") as s:
        first, new = await s.add(cmd("c1"))
        assert new
        again, new = await s.add(cmd("c1"))
        assert not new and again == first
        _, new = await s.add(cmd("e1"), event_key="0xabc:0")
        assert new
        got, new = await s.add(cmd("e1-other-id"), event_key="0xabc:0")
        assert not new and got.command_id == "e1"
        assert await s.finish("c1", "answered", {"ok": True})
        assert not await s.finish("c1", "expired", {"ok": False})
        stored = await s.get("c1")
        assert stored is not None and stored.outcome == {"ok": True} and not stored.open
