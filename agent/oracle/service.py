"""The oracle query service: dApps ask for the latest (or an earlier) signed observation of a
device's sensor and get its EIP-712 envelope plus the calldata to submit it to the oracle contract.

Transports (thin shells around `OracleService.answer`):
- MQTT 5: a JSON request on `<prefix>/<gateway>/oracle/req/<name>` (`<name>`: the asker's broker
  username, bound by the broker's ACL), e.g. {"device":"dev-1", "sensor":"temp"},
  {"device":..,"sensor":..,"sequence":42} or {..,"at":1767225600}; the answer goes to the
  request's Response Topic, which must lie under the asker's own name (`reply_topics` with
  `{client}`, by default `<prefix>/<gateway>/oracle/res/<name>[/...]`), with its Correlation
  Data.
- CoAP: `GET /oracle/{device}/{sensor}` (optionally `?seq=42` or `?at=1767225600`); with the
  Observe option the client gets a notification for every new observation of that sensor
  (CoAP observe is lossy by design: a slow client sees the newest, not every one).

Answer (UTF-8 JSON): {"v":1,"ok":true,"observation":<the envelope, byte for byte>,
"submit":{"to":<oracle contract>,"function":<signature>,"data":<calldata>}} or, when the
observation was signed under another domain than the oracle contract's (e.g. before
`gateway.verifying_contract` was set), "submit":null and "submit_refused":<why> instead of
calldata the contract would revert; or
{"v":1,"ok":false,"error":{"code":<label>,"message":<text>}} where the label is one of
malformed, unknown_device, unknown_sensor, no_data, not_found, busy, unavailable, rate_limited
(then also "retry_after_ms":<n>).

Over MQTT each client (its broker username, the last level of its request topic, which the
broker's ACL binds to its login) has a token bucket of `rate` queries per second and `burst`,
whatever Response Topic it names; a query over the limit is answered `rate_limited` without
reading the journal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from agent.attest.observation import verify_envelope
from agent.errors import EnvelopeError, JournalError
from agent.journal import Journal, JournalEntry
from agent.logs import RateLimitedLog
from agent.metrics import Metrics
from agent.model import Observation
from agent.oracle.calldata import SUBMIT_SIGNATURE, submit_calldata
from agent.oracle.query import OracleQuery, QueryError
from agent.ratelimit import KeyedBuckets

_COMPACT = json.JSONEncoder(separators=(",", ":"))


class OracleService:
    """Answers queries from the journal (awaited: the journal runs them in its own thread) and
    tells stream watchers about new observations (it is a pipeline sink: `offer` is called after
    every journaled batch)."""

    def __init__(
        self,
        journal: Journal,
        *,
        contract: str,
        known_device: Callable[[str], bool],
        metrics: Metrics,
        max_inflight: int = 64,
        rate: float = 20.0,
        burst: int = 40,
        max_clients: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        self.journal = journal
        self.contract = contract
        self.known_device = known_device
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.rate, self.burst = rate, burst
        # One bucket per client, the least recently seen forgotten first beyond `max_clients`.
        self.buckets = KeyedBuckets(rate, burst, max_keys=max_clients)
        self.log = logger or logging.getLogger("agent.oracle")
        self._rl_log = RateLimitedLog(self.log, interval=30.0)
        self._watchers: dict[tuple[str, str], set[Callable[[], None]]] = {}
        self.inflight = 0

    async def find(self, q: OracleQuery) -> JournalEntry:
        """The journal entry the query asks for, or QueryError saying why there is none."""
        j = self.journal
        try:
            if q.sequence is not None:
                seq = q.sequence
                entry = await j.entry(seq)
                if entry is not None and (entry.device_id, entry.sensor) != (q.device, q.sensor):
                    raise QueryError(
                        "not_found",
                        f"gateway sequence {seq} is an observation of "
                        f"{entry.device_id}/{entry.sensor}, not of {q.device}/{q.sensor}",
                    )
            elif q.at is not None:
                entry = await j.latest_at(q.device, q.sensor, q.at)
            else:
                entry = await j.latest(q.device, q.sensor)
            if entry is not None:
                return entry
            sensors = await j.sensors_of(q.device)
        except JournalError as exc:
            raise QueryError("unavailable", f"the journal cannot be read: {exc}") from exc
        if not sensors and not self.known_device(q.device):
            raise QueryError("unknown_device", f"device {q.device!r} is not known to this gateway")
        if not sensors:
            raise QueryError("no_data", f"no observation of device {q.device!r} yet")
        if q.sensor not in sensors:
            raise QueryError(
                "unknown_sensor",
                f"device {q.device!r} has no sensor {q.sensor!r}; it has {', '.join(sensors)}",
            )
        if q.sequence is not None:
            raise QueryError(
                "not_found",
                f"no observation with gateway sequence {q.sequence} of {q.device}/{q.sensor} "
                "is kept (never made, or pruned)",
            )
        raise QueryError(
            "not_found", f"no observation of {q.device}/{q.sensor} journaled at or before {q.at}"
        )

    def render(self, entry: JournalEntry) -> bytes:
        """The answer for one journal entry (its envelope is verified again on the way out)."""
        try:
            v = verify_envelope(entry.envelope)
        except EnvelopeError as exc:
            if entry.envelope.startswith(b'{"v":1,'):
                # Journaled before the upgrade to Observation type v2: genuine, but no longer
                # what a verifier or the oracle contract accepts.
                raise QueryError(
                    "not_found",
                    f"observation {entry.seq} was signed as Observation type v1 (before this "
                    "gateway's upgrade); verifiers and the oracle contract accept type v2 only",
                ) from exc
            # A damaged journal: say so rather than serve it.
            raise QueryError(
                "unavailable", f"stored observation {entry.seq} is damaged: {exc}"
            ) from exc
        signed_for = v.domain.verifying_contract
        if signed_for.lower() != self.contract.lower():
            why = (
                f"signed under the EIP-712 domain of {signed_for}, not of the oracle contract "
                f"{self.contract}: the contract would refuse it"
            )
            tail = b',"submit":null,"submit_refused":' + _COMPACT.encode(why).encode()
        else:
            submit = {
                "to": self.contract,
                "function": SUBMIT_SIGNATURE,
                "data": "0x" + submit_calldata(v).hex(),
            }
            tail = b',"submit":' + _COMPACT.encode(submit).encode()
        return b'{"v":1,"ok":true,"observation":' + entry.envelope + tail + b"}"

    async def answer(self, q: OracleQuery, transport: str) -> bytes:
        """The answer's bytes; raises QueryError (already counted and logged)."""
        try:
            if self.inflight >= self.max_inflight:
                raise QueryError("busy", "the gateway is busy; try again shortly")
            self.inflight += 1
            try:
                body = self.render(await self.find(q))
            finally:
                self.inflight -= 1
        except QueryError as exc:
            self.refused(exc, transport)
            raise
        self.metrics.inc("oracle_queries", transport=transport, result="ok")
        return body

    def admit(self, client: str, transport: str) -> None:
        """Spend one of `client`'s queries; QueryError `rate_limited` (counted and logged) when
        its bucket is empty."""
        wait = self.buckets.take(client)
        if wait > 0:
            exc = QueryError(
                "rate_limited",
                f"rate limit of {self.rate:g} queries/s (burst {self.burst}) exceeded; slow down",
                retry_after_ms=int(wait * 1000) + 1,
            )
            self.refused(exc, transport, client)
            raise exc

    async def handle_json(self, payload: bytes, transport: str, client: str | None = None) -> bytes:
        """A JSON request in, the answer or the error body out; with `client`, the query is
        first counted against that client's rate limit."""
        try:
            if client is not None:
                self.admit(client, transport)
            q = OracleQuery.from_json(payload)
        except QueryError as exc:
            if exc.code != "rate_limited":
                self.refused(exc, transport)
            return exc.body()
        try:
            return await self.answer(q, transport)
        except QueryError as exc:
            return exc.body()

    def refused(self, exc: QueryError, transport: str, client: str | None = None) -> None:
        """Count the refusal (`oracle_queries{result=<code>}`) and log it, at most one line per
        30 s for each transport and code (and client, when one is named)."""
        self.metrics.inc("oracle_queries", transport=transport, result=exc.code)
        self._rl_log.event(
            (transport, exc.code, client or ""),
            "oracle_query_refused",
            logging.WARNING if exc.code in ("unavailable", "busy") else logging.INFO,
            transport=transport,
            reason=exc.code,
            client=client[:80] if client is not None else None,  # None: left out of the line
            detail=exc.message[:160],
        )

    # -- streams -------------------------------------------------------------------------------
    def watch(self, device: str, sensor: str, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify` after each new observation of device/sensor; returns the cancel call."""
        key = (device, sensor)
        self._watchers.setdefault(key, set()).add(notify)

        def cancel() -> None:
            found = self._watchers.get(key)
            if found is not None:
                found.discard(notify)
                if not found:
                    del self._watchers[key]

        return cancel

    def offer(self, previous_seq: int, observations: list[Observation]) -> None:
        if not self._watchers:
            return
        touched = {(o.reading.device_id, o.reading.sensor) for o in observations}
        for key in touched:
            for notify in list(self._watchers.get(key, ())):
                notify()
