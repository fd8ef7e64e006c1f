"""Driving an over-the-air update through the running agent's command service (docs/ota.md):
status, manifest, blocks (each answered by the device; a refused block is sent again from where
the device says it is), apply, then optionally wait until the device confirms the new version
or has rolled back. Every step is a command, so the agent frames it with the device key and
the downlink counter and delivers it over the device's own transport (MQTT or CoAP).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.downlink.codec import ArgValue
from agent.downlink.ota import (
    Manifest,
    begin_args,
    block_args,
    file_args,
    manifest_mac,
)
from agent.errors import AgentError

# send(action, args, ttl seconds) -> the command service's outcome (docs/downlink.md)
Send = Callable[[str, Mapping[str, ArgValue], float], Awaitable[dict[str, Any]]]
Progress = Callable[[str], None]
RESENDS = 3  # a block refused this many times in a row ends the update


class UpdateFailed(AgentError):
    """The update stopped; `reason` is the device's status or the service's refusal."""

    def __init__(self, reason: str, detail: str, fix: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}", fix=fix)
        self.reason = reason
        self.detail = detail


@dataclass
class UpdateResult:
    version: str
    state: str  # "staged" (not waited for), "ok" (confirmed), "rolled_back"
    running: str
    resumed: bool
    blocks: int
    resent: int


class Updater:
    def __init__(
        self,
        send: Send,
        key: bytes,
        device: str,
        manifest: Manifest,
        contents: Mapping[str, bytes],
        *,
        ttl: float = 60,
        progress: Progress = lambda line: None,
    ) -> None:
        self.send, self.key, self.device = send, key, device
        self.m, self.contents, self.ttl, self.progress = manifest, contents, ttl, progress
        self.blocks = 0
        self.resent = 0

    async def call(
        self, action: str, args: Mapping[str, ArgValue], ttl: float | None = None
    ) -> dict[str, Any]:
        out = await self.send(action, args, self.ttl if ttl is None else ttl)
        if not out.get("ok"):
            raise self.failure(action, out)
        result: dict[str, Any] = out.get("result", {})
        return result

    def failure(self, action: str, out: Mapping[str, Any]) -> UpdateFailed:
        said = out.get("result", {}).get("error")
        detail = f"{action} to {self.device}: {out.get('detail')}"
        if said:
            detail += f" ({said})"
        return UpdateFailed(str(out.get("error")), detail)

    async def status(self, ttl: float | None = None) -> dict[str, Any]:
        return await self.call("ota_status", {}, ttl)

    async def stage(self) -> bool:
        """Manifest and blocks; True when an interrupted transfer of this manifest resumed."""
        st = await self.status()
        if st.get("state") in ("pending", "trial"):
            raise UpdateFailed(
                "busy",
                f"{self.device} has update {st.get('v')} on trial, not confirmed yet",
                fix="wait for it to confirm or roll back (firmware update --status)",
            )
        resumed = st.get("mh") == self.m.digest()
        if resumed:
            k, i = int(st["k"]), int(st["i"])
            self.progress(f"resuming: the device has the manifest, next file {k} block {i}")
        else:
            session = int((await self.call("ota_begin", begin_args(self.m)))["session"])
            for n in range(len(self.m.files)):
                await self.call("ota_file", file_args(self.m, n))
            mac = manifest_mac(self.key, self.device, session, self.m)
            await self.call("ota_manifest", {"mac": mac})
            self.progress(f"manifest accepted: session {session}")
            k, i = 0, 0
        await self.transfer(k, i)
        return resumed

    async def transfer(self, k: int, i: int) -> None:
        m, refused = self.m, 0
        total = sum(m.blocks_in(n) for n in range(len(m.files)))
        while k < len(m.files):
            if i >= m.blocks_in(k):
                k, i = k + 1, 0
                continue
            data = self.contents[m.files[k].path][i * m.block_size : (i + 1) * m.block_size]
            out = await self.send("ota_block", block_args(k, i, data), self.ttl)
            if out.get("ok"):
                refused = 0
                self.blocks += 1
                r = out["result"]
                k, i = int(r["k"]), int(r["next"])
                if self.blocks % 20 == 0:
                    self.progress(f"{self.blocks}/{total} blocks")
                continue
            if out.get("error") not in ("out_of_order", "bad_block", "bad_file"):
                raise self.failure("ota_block", out)
            refused += 1
            self.resent += 1
            if refused > RESENDS:
                raise UpdateFailed(
                    str(out.get("error")),
                    f"file {m.files[k].path} block {i} refused {refused} times in a row; "
                    f"{self.device} keeps its running firmware",
                )
            st = await self.status()  # where the device is: send again from there
            k, i = int(st.get("k", 0)), int(st.get("i", 0))
            self.progress(
                f"block refused ({out.get('error')}): sending again from file {k} block {i}"
            )

    async def apply(self) -> None:
        await self.call("ota_apply", {})
        self.progress(f"{self.device} verified every file and restarts into {self.m.version}")

    async def wait(self, limit_s: float) -> dict[str, Any]:
        """ota_status until the device confirmed the new version or rolled back."""
        deadline = time.monotonic() + limit_s
        while True:
            left = deadline - time.monotonic()
            if left <= 1:
                raise UpdateFailed(
                    "timeout",
                    f"{self.device} did not confirm {self.m.version} or roll back in {limit_s:g} s",
                )
            st = await self.status(ttl=left)
            if st.get("v") == self.m.version and st.get("state") in ("ok", "rolled_back"):
                return st
            await asyncio.sleep(1)

    async def run(self, wait_s: float | None) -> UpdateResult:
        resumed = await self.stage()
        await self.apply()
        if wait_s is None:
            return UpdateResult(self.m.version, "staged", "", resumed, self.blocks, self.resent)
        st = await self.wait(wait_s)
        res = UpdateResult(
            self.m.version, st["state"], st["running"], resumed, self.blocks, self.resent
        )
        if res.state == "rolled_back":
            raise UpdateFailed(
                "rolled_back",
                f"{self.device} did not confirm {self.m.version} within {self.m.boots} boots "
                f"and runs {res.running} again",
                fix="see the board's console (event=ota_boot_failed) and fix the new version",
            )
        return res


__all__ = ["Send", "UpdateFailed", "UpdateResult", "Updater"]
