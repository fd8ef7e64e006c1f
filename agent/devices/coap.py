"""CoAP source (aiocoap): devices POST frames to /up/{device} (agent/devices/coapresources.py);
configured devices are OBSERVEd (agent/devices/coapobserve.py).

A POST is answered only after the pipeline's verdict: 2.04 once the frame is signed and
journaled, 4.xx/5.03 otherwise (table in docs/device-frame.md, "Over CoAP"). Devices with OSCORE
credentials must send OSCORE-protected requests whose authenticated claim names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.error
import aiocoap.resource
from aiocoap.blockwise import Block1Spool
from aiocoap.numbers.codes import Code

from agent.coapsite import DirectSite, ServerContext
from agent.component import Health, State
from agent.config import CoapSourceConfig
from agent.devices.coapobserve import CF_CBOR, CF_JSON, CoapObserver
from agent.devices.coapresources import (
    AckResource,
    CommandHooks,
    Reply,
    UpResource,
    code_for_rejection,
)
from agent.devices.codecs.cbor_frame import parse_cbor_frame
from agent.devices.codecs.frame import parse_frame
from agent.errors import ConfigError, FrameError
from agent.frame import DeviceFrame
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import NAME_RE, AuthMethod, Transport
from agent.pipeline import Arrival, Pipeline
from agent.ratelimit import KeyedBuckets
from agent.secrets import check_secret_mode

# Refused POSTs per peer host: past this budget, a peer's requests are answered 4.29 before they
# are parsed, so a replay or forgery flood from one address costs the agent little and costs the
# devices it names nothing (their own budget is spent only by fresh, authenticated frames).
PEER_REFUSALS_PER_S = 5.0
PEER_REFUSALS_BURST = 50.0
MAX_PEERS = 4096
# Refusals that say nothing about the peer: the device's own budget, the gateway being busy.
_NOT_THE_PEERS_FAULT = frozenset({"rate_limited", "journal_full", "busy"})


def peer_host(remote: Any) -> str:
    """The IP address a request came from (through OSCORE's wrapper; v4-mapped as IPv4)."""
    while getattr(remote, "underlying_address", None) is not None:
        remote = remote.underlying_address
    sockaddr = getattr(remote, "sockaddr", None)
    if isinstance(sockaddr, tuple) and sockaddr:
        return str(sockaddr[0]).removeprefix("::ffff:")
    return str(getattr(remote, "hostinfo", "?"))


class CoapSource:
    name = "coap"

    def __init__(
        self,
        cfg: CoapSourceConfig,
        *,
        pipeline: Pipeline,
        metrics: Metrics,
        config_file: str = "agent.toml",
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.devices.coap")
        self._rl = RateLimitedLog(self.log)
        self.ready = asyncio.Event()
        self.oscore_devices = oscore_devices(cfg.oscore_dir, config_file)
        self._server: aiocoap.Context | None = None
        self._client: aiocoap.Context | None = None
        self._accepting = True
        self.received = 0
        self.observer = CoapObserver(cfg, pipeline, metrics, self._parse, self._count, self.log)
        self.observing = self.observer.observing
        self._peer_refusals = KeyedBuckets(
            PEER_REFUSALS_PER_S, PEER_REFUSALS_BURST, max_keys=MAX_PEERS
        )
        self._peer_blocked: dict[str, float] = {}  # peer -> refused unread until (monotonic)
        self._observed_only = (
            frozenset(self.observing) - set(cfg.allowed_devices) - self.oscore_devices
        )
        self.commands: CommandHooks | None = None  # set by wiring when [downlink] is on
        metrics.gauge("frames_received_coap", lambda: float(self.received))

    @property
    def allowed_devices(self) -> frozenset[str]:
        """Listed devices, observed devices and devices with OSCORE credentials."""
        return frozenset(self.cfg.allowed_devices) | set(self.observing) | self.oscore_devices

    # -- server ---------------------------------------------------------------------------
    def _site(self) -> Any:
        site = DirectSite()
        site.add_resource(
            (".well-known", "core"),
            aiocoap.resource.WKCResource(site.get_resources_as_linkheader),
        )
        site.add_direct("up", UpResource(self))
        site.add_direct("ack", AckResource(self))
        if not self.oscore_devices:
            return site
        from aiocoap.credentials import CredentialsMap
        from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

        assert self.cfg.oscore_dir is not None
        creds = CredentialsMap()
        creds.load_from_dict(
            {
                f":{d}": {"oscore": {"basedir": str(self.cfg.oscore_dir / d) + "/"}}
                for d in sorted(self.oscore_devices)
            }
        )
        return OscoreSiteWrapper(site, creds)

    def _reply(self, code: Code, reason: str, **options: Any) -> Reply:
        self.metrics.inc("coap_responses", code=str(code.dotted))
        return Reply(aiocoap.Message(code=code, payload=reason.encode(), **options))

    def _refuse(self, device: str, code: Code, reason: str, detail: str, **opts: Any) -> Reply:
        self.pipeline.reject("coap", device, reason, detail)
        return self._reply(code, reason, **opts)

    def _charge_peer(self, peer: str, reason: str) -> None:
        """A refused request spends its peer's refusal budget; an empty budget blocks the peer
        until a token is back."""
        if reason in _NOT_THE_PEERS_FAULT:
            return
        wait = self._peer_refusals.take(peer)
        if wait:
            if len(self._peer_blocked) >= MAX_PEERS:
                self._peer_blocked.clear()
            self._peer_blocked[peer] = time.monotonic() + wait

    def _peer_over_budget(self, peer: str) -> bool:
        until = self._peer_blocked.get(peer)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._peer_blocked[peer]
        return False

    async def handle_post(self, request: aiocoap.Message, spool: Block1Spool) -> aiocoap.Message:
        peer = peer_host(request.remote)
        if self._peer_over_budget(peer):
            self.metrics.inc("coap_peer_limited")
            raise self._reply(Code.TOO_MANY_REQUESTS, "peer_limited", max_age=1)
        try:
            return await self._handle_post(request, spool)
        except Reply as r:
            if not r.message.code.is_successful() and r.message.code != Code.CONTINUE:
                self._charge_peer(peer, r.message.payload.decode(errors="replace"))
            raise

    async def _handle_post(self, request: aiocoap.Message, spool: Block1Spool) -> aiocoap.Message:
        self.received += 1
        path = request.opt.uri_path
        if len(path) != 1 or not NAME_RE.match(path[0]):
            raise self._refuse(
                "?", Code.NOT_FOUND, "bad_path", f"path /up/{'/'.join(path)[:60]} names no device"
            )
        device = path[0]
        limit = self.cfg.max_payload
        b1 = request.opt.block1
        size1 = request.opt.size1
        if (size1 is not None and size1 > limit) or (
            b1 is not None and b1.start + len(request.payload) > limit
        ):
            raise self._refuse(
                device,
                Code.REQUEST_ENTITY_TOO_LARGE,
                "oversize",
                f"more than {limit} bytes",
                size1=limit,
            )
        if b1 is not None:
            request = spool.feed_and_take(request)  # 2.31 Continue until the last block
        protected = self._check_oscore(request, device)
        if device in self._observed_only:
            raise self._refuse(
                device,
                Code.UNAUTHORIZED,
                "unknown_device",
                f"{device!r} is observed by the gateway; its readings come from the "
                "observation only, never from a POST",
            )
        if not self._accepting or not self.pipeline.has_space():
            # Backpressure: say when to come back instead of queueing without bound.
            self.metrics.inc("source_paused", source="coap")
            raise self._reply(Code.SERVICE_UNAVAILABLE, "busy", max_age=self.cfg.busy_max_age)
        cf = request.opt.content_format
        if cf is not None and int(cf) not in (CF_JSON, CF_CBOR):
            raise self._refuse(
                device,
                Code.UNSUPPORTED_CONTENT_FORMAT,
                "bad_content_format",
                f"content-format {int(cf)}; send 50 (JSON) or 60 (CBOR)",
            )
        try:
            frame = self._parse(request.payload, cf is not None and int(cf) == CF_CBOR)
        except FrameError as exc:
            code = Code.REQUEST_ENTITY_TOO_LARGE if exc.reason == "oversize" else Code.BAD_REQUEST
            extra = {"size1": limit} if exc.reason == "oversize" else {}
            raise self._refuse(device, code, exc.reason, exc.detail, **extra) from None
        if frame.device_id is not None and frame.device_id != device:
            raise self._refuse(
                device,
                Code.BAD_REQUEST,
                "device_mismatch",
                f"frame id {frame.device_id!r} posted to /up/{device}",
            )
        verdict = await self._submit(frame, device, AuthMethod.OSCORE if protected else None)
        if verdict is None:
            self.metrics.inc("coap_responses", code="2.04")
            # A sleepy device's pending command rides on the answer to its POST.
            command = self.commands.pending_frame(device) if self.commands is not None else None
            if command is not None:
                return aiocoap.Message(code=Code.CHANGED, payload=command, content_format=CF_JSON)
            return aiocoap.Message(code=Code.CHANGED)
        code = code_for_rejection(verdict)
        # "Come back later" answers say when: Max-Age on 5.03 and 4.29.
        busy = code in (Code.SERVICE_UNAVAILABLE, Code.TOO_MANY_REQUESTS)
        opts = {"max_age": self.cfg.busy_max_age} if busy else {}
        raise self._reply(code, verdict, **opts)

    def _check_oscore(self, request: aiocoap.Message, device: str) -> bool:
        """aiocoap lets unprotected requests through an OSCORE site: the claims are checked
        here. A device with credentials must be protected, and by its own context. True when
        the request was (the transport authenticated the device)."""
        claims = getattr(request.remote, "authenticated_claims", None) or ()
        if device not in self.oscore_devices and not claims:
            return False
        if f":{device}" not in claims:
            why = "unprotected" if not claims else f"protected by {', '.join(claims)[:40]}"
            raise self._refuse(
                device,
                Code.UNAUTHORIZED,
                "oscore_required",
                f"/up/{device} needs OSCORE with the device's own context; request was {why}",
            )
        return True

    def _count(self) -> None:
        self.received += 1

    def _parse(self, payload: bytes, cbor: bool) -> DeviceFrame:
        if cbor:
            return parse_cbor_frame(
                payload, max_bytes=self.cfg.max_payload, max_values=self.cfg.max_values_per_frame
            )
        return parse_frame(
            payload, max_bytes=self.cfg.max_payload, max_values=self.cfg.max_values_per_frame
        )

    async def _submit(
        self, frame: DeviceFrame, device: str, verified: AuthMethod | None
    ) -> str | None:
        """Offer the frame and wait for the pipeline's verdict (None: signed and journaled)."""
        done = asyncio.get_running_loop().create_future()

        def ack() -> None:
            if not done.done():
                done.set_result(None)

        arrival = Arrival(frame, device, Transport.COAP, "coap", ack=ack, verified=verified)
        self.pipeline.offer(arrival)
        await done
        return arrival.rejected

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        self._accepting = True
        tasks: list[asyncio.Task[None]] = []
        try:
            self._server = await ServerContext.create_server_context(
                self._site(),
                bind=(self.cfg.bind, self.cfg.port),
                loggername="agent.devices.coap.aiocoap",
                transports=["udp6"],
            )
            if self.cfg.observe:
                self._client = await aiocoap.Context.create_client_context(
                    loggername="agent.devices.coap.aiocoap-client", transports=["udp6"]
                )
                client = self._client
                tasks = [
                    asyncio.create_task(self.observer.observe(client, oc))
                    for oc in self.cfg.observe
                ]
            event(
                self.log,
                "coap_listening",
                bind=self.cfg.bind,
                port=self.cfg.port,
                oscore_devices=len(self.oscore_devices),
                observing=len(self.cfg.observe),
            )
            self.ready.set()
            await asyncio.gather(*tasks) if tasks else await asyncio.Event().wait()
        finally:
            self.ready.clear()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ctx in (self._client, self._server):
                if ctx is not None:
                    await ctx.shutdown()
            self._client = self._server = None

    def pause_intake(self) -> None:
        """Answer new POSTs with 5.03 (shutdown: the pipeline drains what it has)."""
        self._accepting = False

    def resume_intake(self) -> None:
        self._accepting = True

    async def stop(self, grace: float = 0.5) -> None:
        """Close the server and client contexts (run's task is cancelled after all stops)."""
        for ctx in (self._client, self._server):
            if ctx is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ctx.shutdown(), grace)
        self._client = self._server = None

    def health(self) -> Health:
        parts = {
            oc.device: Health(
                "up" if self.observer.registered.get(oc.device) else "down", {"uri": oc.uri}
            )
            for oc in self.cfg.observe
        }
        listening = self._server is not None
        observing = sum(1 for p in parts.values() if p.state == "up")
        state: State = "down" if not listening else "up"
        if listening and observing < len(parts):
            state = "degraded"
        return Health(
            state,
            {
                "listening": listening,
                "bind": f"{self.cfg.bind}:{self.cfg.port}",
                "frames": self.received,
                "observing": observing,
            },
            parts,
        )


def oscore_devices(oscore_dir: Path | None, config_file: str) -> frozenset[str]:
    """Device ids with an OSCORE security context: the subdirectories of `oscore_dir`, each
    holding aiocoap's settings.json/secret.json (secrets 0600, checked here)."""
    if oscore_dir is None:
        return frozenset()
    if not oscore_dir.is_dir():
        raise ConfigError(
            config_file, "sources.coap.oscore_dir", f"{oscore_dir} is not a directory"
        )
    out = set()
    for d in sorted(oscore_dir.iterdir()):
        if not d.is_dir():
            continue
        if not NAME_RE.match(d.name):
            raise ConfigError(
                config_file,
                "sources.coap.oscore_dir",
                f"{d} is not named by a valid device id (1-32 of A-Z a-z 0-9 _ . : -)",
            )
        for secret in _secret_files(d.iterdir()):
            check_secret_mode(secret)
        out.add(d.name)
    return frozenset(out)


def _secret_files(files: Iterable[Path]) -> list[Path]:
    return [f for f in files if f.name in ("secret.json", "settings.json")]
