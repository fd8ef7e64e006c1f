"""The CoAP source's client side: configured devices' resources OBSERVEd (RFC 7641), each
observation re-registered with backoff when it goes quiet or ends, independent of all others."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import aiocoap
import aiocoap.error
from aiocoap.numbers.codes import Code

from agent.backoff import Backoff
from agent.config import CoapObserveConfig, CoapSourceConfig
from agent.errors import AgentError, FrameError
from agent.frame import DeviceFrame
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import Transport
from agent.pipeline import Arrival, Pipeline

CF_JSON = 50
CF_CBOR = 60


class ObserveLost(AgentError):
    """An observation ended: the device went away, rebooted, or refused."""


class CoapObserver:
    """Observations of `cfg.observe`; `observing[device]`: notifications arrive now,
    `registered[device]`: the current registration succeeded."""

    def __init__(
        self,
        cfg: CoapSourceConfig,
        pipeline: Pipeline,
        metrics: Metrics,
        parse: Callable[[bytes, bool], DeviceFrame],
        count: Callable[[], None],
        log: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.parse = parse
        self.count = count
        self.log = log
        self.rl = RateLimitedLog(log)
        self.observing: dict[str, bool] = {o.device: False for o in cfg.observe}
        self.registered: dict[str, bool] = dict(self.observing)

    def _handle_notification(self, oc: CoapObserveConfig, msg: aiocoap.Message) -> bool:
        """Parse one notification and offer it; False when the pipeline asks us to wait."""
        self.count()
        cf = msg.opt.content_format
        if cf is not None and int(cf) not in (CF_JSON, CF_CBOR):
            self.pipeline.reject(
                "coap", oc.device, "bad_content_format", f"notification content-format {int(cf)}"
            )
            return True
        try:
            frame = self.parse(msg.payload, cf is not None and int(cf) == CF_CBOR)
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
            self.registered[oc.device] = True
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

    async def observe(self, ctx: aiocoap.Context, oc: CoapObserveConfig) -> None:
        """One device's observation, re-registered with backoff; independent of all others."""
        backoff = Backoff(0.5, self.cfg.backoff_max_s, jitter=0.25, reset_after=math.inf)
        while True:
            self.registered[oc.device] = False
            try:
                await self._observe_once(ctx, oc)
                why = "ended"
            except (ObserveLost, aiocoap.error.Error, OSError, TimeoutError) as exc:
                why = str(exc) or type(exc).__name__
            if self.registered[oc.device]:
                backoff.succeeded()  # it worked until now: the first retry comes soon
            delay = backoff.next_delay()
            self.metrics.inc("coap_observe_lost", device=oc.device)
            self.rl.event(
                ("observe", oc.device),
                "coap_observe_lost",
                device=oc.device,
                uri=oc.uri,
                reason=why[:120],
                retry_in=f"{delay:.1f}s",
            )
            await asyncio.sleep(delay)


__all__ = ["CF_CBOR", "CF_JSON", "CoapObserver", "ObserveLost"]
