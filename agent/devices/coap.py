"""CoAP source (aiocoap): devices POST frames to /up/{device}; configured devices are OBSERVEd.

A POST is answered only after the pipeline's verdict: 2.04 once the frame is signed and
journaled, 4.xx/5.03 otherwise (table in docs/device-frame.md, "Over CoAP"). Devices with OSCORE
credentials must send OSCORE-protected requests whose authenticated claim names them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.error
import aiocoap.resource
from aiocoap.blockwise import Block1Spool
from aiocoap.numbers.codes import Code
from aiocoap.util.linkformat import Link, LinkFormat

from agent.backoff import Backoff
from agent.coapsite import DirectSite, ServerContext
from agent.component import Health, State
from agent.config import CoapObserveConfig, CoapSourceConfig
from agent.devices.codecs.cbor_frame import parse_cbor_frame
from agent.devices.codecs.frame import parse_frame
from agent.errors import AgentError, ConfigError, FrameError
from agent.frame import DeviceFrame
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import NAME_RE, AuthMethod, Transport
from agent.pipeline import Arrival, Pipeline
from agent.ratelimit import KeyedBuckets
from agent.secrets import check_secret_mode

CF_JSON = 50
CF_CBOR = 60

# The pipeline's refusal reasons as CoAP response codes. Authentication failures are 4.01;
# `replay` is 4.00, not 4.01: the device's credentials are fine, its counter is not (a device
# that re-sends a frame whose 2.04 it missed learns the frame is already taken, and must not
# conclude that it needs re-pairing).
UNAUTHENTICATED = frozenset(
    {"unknown_device", "missing_mac", "bad_mac", "revoked", "not_active", "wrong_transport"}
)


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


def code_for_rejection(reason: str) -> Code:
    if reason in UNAUTHENTICATED:
        return Code.UNAUTHORIZED
    if reason == "rate_limited":
        return Code.TOO_MANY_REQUESTS
    if reason == "journal_full":
        return Code.SERVICE_UNAVAILABLE
    return Code.BAD_REQUEST


class _Reply(Exception):
    """Internal: leave the request handler with this response."""

    def __init__(self, message: aiocoap.Message) -> None:
        self.message = message


class UpResource(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    """/up/{device}: POST a device frame (JSON, content-format 50, or CBOR, 60)."""

    def __init__(self, source: CoapSource) -> None:
        super().__init__()
        self.source = source
        self._spool = Block1Spool()

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # assembled here, bounded by max_payload (aiocoap's own is unbounded)

    def get_resources_as_linkheader(self) -> LinkFormat:
        return LinkFormat([Link("", rt="edgence.frame", ct="50 60", title="POST /up/{device}")])

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            return await self.source.handle_post(request, self._spool)
        except _Reply as r:
            return r.message


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
        self.observing: dict[str, bool] = {o.device: False for o in cfg.observe}
        self._registered: dict[str, bool] = dict(self.observing)
        self._peer_refusals = KeyedBuckets(
            PEER_REFUSALS_PER_S, PEER_REFUSALS_BURST, max_keys=MAX_PEERS
        )
        self._peer_blocked: dict[str, float] = {}  # peer -> refused unread until (monotonic)
        self._observed_only = (
            frozenset(self.observing) - set(cfg.allowed_devices) - self.oscore_devices
        )
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

    def _reply(self, code: Code, reason: str, **options: Any) -> _Reply:
        self.metrics.inc("coap_responses", code=str(code.dotted))
        return _Reply(aiocoap.Message(code=code, payload=reason.encode(), **options))

    def _refuse(self, device: str, code: Code, reason: str, detail: str, **opts: Any) -> _Reply:
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
        except _Reply as r:
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

    # -- client: OBSERVE -----------------------------------------------------------------
    def _handle_notification(self, oc: CoapObserveConfig, msg: aiocoap.Message) -> bool:
        """Parse one notification and offer it; False when the pipeline asks us to wait."""
        self.received += 1
        cf = msg.opt.content_format
        if cf is not None and int(cf) not in (CF_JSON, CF_CBOR):
            self.pipeline.reject(
                "coap", oc.device, "bad_content_format", f"notification content-format {int(cf)}"
            )
            return True
        try:
            frame = self._parse(msg.payload, cf is not None and int(cf) == CF_CBOR)
        except FrameError as exc:
            self.pipeline.reject("coap", oc.device, exc.reason, f"{oc.uri}: {exc.detail}")
            return True
        if frame.device_id is not None and frame.device_id != oc.device:
            self.pipeline.reject(
                "coap", oc.device, "device_mismatch", f"frame id {frame.device_id!r} at {oc.uri}"
            )
            return True
        return self.pipeline.offer(Arrival(frame, oc.device, Transport.COAP, "coap"))

    async def _observe_once(self, ctx: aiocoap.Context, oc: CoapObserveConfig) -> None:
        """Register, take notifications until they stop; raises why the observation ended."""
        pr = ctx.request(aiocoap.Message(code=Code.GET, uri=oc.uri, observe=0))
        try:
            first = await asyncio.wait_for(pr.response, oc.timeout_s)
            if not first.code.is_successful():
                raise ObserveLost(f"device answered {first.code.dotted}")
            self.observing[oc.device] = first.opt.observe is not None
            if not self._handle_notification(oc, first):
                await self.pipeline.wait_for_space()
            if first.opt.observe is None:
                raise ObserveLost("the resource is not observable (no Observe option)")
            self._registered[oc.device] = True
            event(self.log, "coap_observing", device=oc.device, uri=oc.uri)
            self.metrics.inc("coap_observe_registered", device=oc.device)
            max_age = first.opt.max_age if first.opt.max_age is not None else 60
            notes = pr.observation.__aiter__()
            while True:
                # No notification while the last one is fresh plus a margin: the device may
                # have rebooted and forgotten us (RFC 7641 3.3.1); register again.
                wait = oc.reregister_s if oc.reregister_s is not None else max_age * 1.25 + 1
                try:
                    msg = await asyncio.wait_for(notes.__anext__(), wait)
                except StopAsyncIteration:
                    raise ObserveLost("the device ended the observation") from None
                except TimeoutError:
                    raise ObserveLost(f"no notification for {wait:.1f}s") from None
                max_age = msg.opt.max_age if msg.opt.max_age is not None else 60
                if not msg.code.is_successful():
                    raise ObserveLost(f"device sent {msg.code.dotted}")
                if not self._handle_notification(oc, msg):
                    await self.pipeline.wait_for_space()
        finally:
            self.observing[oc.device] = False
            if not pr.observation.cancelled:  # an error may have ended it already
                pr.observation.cancel()
            if not pr.response.done():
                pr.response.cancel()

    async def _observe(self, ctx: aiocoap.Context, oc: CoapObserveConfig) -> None:
        """One device's observation, re-registered with backoff; independent of all others."""
        backoff = Backoff(0.5, self.cfg.backoff_max_s, jitter=0.25, reset_after=math.inf)
        while True:
            self._registered[oc.device] = False
            try:
                await self._observe_once(ctx, oc)
                why = "ended"
            except (ObserveLost, aiocoap.error.Error, OSError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
            if self._registered[oc.device]:
                backoff.succeeded()  # it worked until now: the first retry comes soon
            delay = backoff.next_delay()
            self.metrics.inc("coap_observe_lost", device=oc.device)
            self._rl.event(
                ("observe", oc.device),
                "coap_observe_lost",
                device=oc.device,
                uri=oc.uri,
                reason=why[:120],
                retry_in=f"{delay:.1f}s",
            )
            await asyncio.sleep(delay)

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
                tasks = [asyncio.create_task(self._observe(client, oc)) for oc in self.cfg.observe]
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
            oc.device: Health("up" if self._registered.get(oc.device) else "down", {"uri": oc.uri})
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


class ObserveLost(AgentError):
    """An observation ended: the device went away, rebooted, or refused."""


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
