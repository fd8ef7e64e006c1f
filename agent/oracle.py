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
malformed, unknown_device, unknown_sensor, no_data, not_found, busy, unavailable.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_abi.abi import encode as abi_encode

from agent.attest.eip712 import keccak256
from agent.attest.observation import VerifiedObservation, parse_document, verify_envelope
from agent.coapserver import CoapServer
from agent.config import BrokerEndpoint
from agent.errors import AgentError, EnvelopeError, JournalError
from agent.journal import Journal, JournalEntry
from agent.logs import RateLimitedLog
from agent.metrics import Metrics
from agent.model import ASSURANCE_NAMES, NAME_RE, Observation, label_bytes32
from agent.mqtt import MqttResponder, publish_json_reply

OBSERVATION_TUPLE = "(bytes32,bytes32,bytes32,int256,int8,bytes32,uint64,uint64,uint64,uint8,uint8)"
SUBMIT_SIGNATURE = f"submit(address,{OBSERVATION_TUPLE},bytes)"
SUBMIT_BATCH_SIGNATURE = f"submitBatch(address[],{OBSERVATION_TUPLE}[],bytes[])"
SUBMIT_SELECTOR = keccak256(SUBMIT_SIGNATURE.encode("ascii"))[:4]
SUBMIT_BATCH_SELECTOR = keccak256(SUBMIT_BATCH_SIGNATURE.encode("ascii"))[:4]

MAX_REQUEST_BYTES = 4096
_UINT64_MAX = 2**64 - 1
_QUERY_KEYS = frozenset({"device", "sensor", "sequence", "at"})
_DIGITS_RE = re.compile(r"^[0-9]{1,20}\Z")
_COMPACT = json.JSONEncoder(separators=(",", ":"))


# -- calldata (pure) -----------------------------------------------------------------------------


def observation_tuple(v: VerifiedObservation) -> tuple[Any, ...]:
    """The ObservationOracle.Observation struct of a verified envelope, as eth-abi takes it."""
    r = v.reading
    return (
        v.feed,
        label_bytes32(r.device_id, "device id"),
        label_bytes32(r.sensor, "sensor"),
        r.value,
        r.exponent,
        label_bytes32(r.unit, "unit"),
        r.timestamp,
        r.counter,
        v.gateway_sequence,
        v.transport_code,
        v.assurance,
    )


def submit_calldata(v: VerifiedObservation) -> bytes:
    """Calldata of ObservationOracle.submit(gateway, observation, signature)."""
    return SUBMIT_SELECTOR + abi_encode(
        ["address", OBSERVATION_TUPLE, "bytes"], [v.signer, observation_tuple(v), v.signature]
    )


def submit_batch_calldata(items: Sequence[VerifiedObservation]) -> bytes:
    """Calldata of ObservationOracle.submitBatch(gateways, observations, signatures)."""
    return SUBMIT_BATCH_SELECTOR + abi_encode(
        ["address[]", f"{OBSERVATION_TUPLE}[]", "bytes[]"],
        [
            [v.signer for v in items],
            [observation_tuple(v) for v in items],
            [v.signature for v in items],
        ],
    )


def check_answer(answer: Mapping[str, Any]) -> VerifiedObservation:
    """Verify an oracle answer: its envelope, and that its calldata (if any) is exactly
    ObservationOracle.submit of that envelope to the contract the envelope was signed for."""
    if answer.get("ok") is not True or "observation" not in answer:
        raise EnvelopeError('not a successful oracle answer (no "observation")')
    v = verify_envelope(answer["observation"])
    submit = answer.get("submit")
    if submit is None:
        return v
    if not isinstance(submit, Mapping):
        raise EnvelopeError("field submit of the answer must be an object or null")
    to = str(submit.get("to", ""))
    if to.lower() != v.domain.verifying_contract.lower():
        raise EnvelopeError(
            f"the answer's calldata goes to {to}, but the observation was signed for "
            f"{v.domain.verifying_contract}"
        )
    if str(submit.get("data", "")).lower() != "0x" + submit_calldata(v).hex():
        raise EnvelopeError("the answer's calldata is not submit() of its observation")
    return v


def verify_document(data: bytes | str | Mapping[str, Any]) -> list[str]:
    """What `edgence-agent verify` prints for an envelope or an oracle answer (EnvelopeError
    when either is invalid): the signed fields, then what the signature does not claim."""
    doc = parse_document(data)
    answer = "observation" in doc and "ok" in doc
    v = check_answer(doc) if answer else verify_envelope(doc)
    r = v.reading
    lines = [
        f"ok signer={v.signer} seq={v.gateway_sequence} device={r.device_id} "
        f"sensor={r.sensor} value={r.decimal} unit={r.unit} counter={r.counter} "
        f"timestamp={r.timestamp} chainId={v.domain.chain_id} "
        f"feed=0x{v.feed.hex()} transport={r.transport.value} "
        f"assurance={v.assurance} ({ASSURANCE_NAMES[v.assurance]}) "
        f"contract={v.domain.verifying_contract}"
    ]
    for field in v.unsigned:
        lines.append(
            f"  not signed: {field} ({r.auth.value!r}: the signature claims only its "
            f"assurance level {v.assurance}, not which method of that level)"
        )
    if answer:
        if doc.get("submit") is None:
            why = doc.get("submit_refused", "no reason given")
            lines.append(f"  answer: no calldata offered: {why}")
        else:
            lines.append(
                f"  answer: calldata is submit() of this observation to {doc['submit']['to']}"
            )
    return lines


# -- requests (pure) -----------------------------------------------------------------------------


class QueryError(AgentError):
    """A query the service answers with an error; `code` is a stable label (also the counter's)."""

    STATUS: ClassVar[dict[str, int]] = {
        "malformed": 400,
        "unknown_device": 404,
        "unknown_sensor": 404,
        "no_data": 404,
        "not_found": 404,
        "busy": 503,
        "unavailable": 503,
    }

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")

    @property
    def status(self) -> int:
        return self.STATUS.get(self.code, 500)

    def body(self) -> bytes:
        return _COMPACT.encode(
            {"v": 1, "ok": False, "error": {"code": self.code, "message": self.message}}
        ).encode()


@dataclass(frozen=True)
class OracleQuery:
    """Which observation is asked for: the latest, the one with `sequence`, or the newest one
    journaled at or before unix time `at` (the gateway's clock)."""

    device: str
    sensor: str
    sequence: int | None = None
    at: int | None = None

    def __post_init__(self) -> None:
        for what, name in (("device", self.device), ("sensor", self.sensor)):
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise QueryError(
                    "malformed", f"{what} must be 1-32 characters of A-Z a-z 0-9 _ . : -"
                )
        if self.sequence is not None and self.at is not None:
            raise QueryError("malformed", "give sequence or at, not both")
        for what, n in (("sequence", self.sequence), ("at", self.at)):
            if n is not None and (type(n) is not int or not 0 <= n <= _UINT64_MAX):
                raise QueryError("malformed", f"{what} must be an integer in uint64")

    @classmethod
    def from_json(cls, payload: bytes) -> OracleQuery:
        if len(payload) > MAX_REQUEST_BYTES:
            raise QueryError(
                "malformed", f"request of {len(payload)} bytes; at most {MAX_REQUEST_BYTES}"
            )
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise QueryError("malformed", "request is not valid JSON") from None
        if not isinstance(body, dict):
            raise QueryError("malformed", 'request must be a JSON object like {"device":..}')
        unknown = sorted(set(body) - _QUERY_KEYS)
        if unknown:
            raise QueryError(
                "malformed",
                f"unknown field {unknown[0][:32]!r}; allowed: at, device, sensor, sequence",
            )
        for k in ("device", "sensor"):
            if k not in body:
                raise QueryError("malformed", f"missing field {k}")
        return cls(body["device"], body["sensor"], body.get("sequence"), body.get("at"))

    @classmethod
    def from_coap(cls, path: Sequence[str], query: Sequence[str]) -> OracleQuery:
        if len(path) != 2:
            raise QueryError("malformed", "the path is /oracle/{device}/{sensor}")
        args: dict[str, int] = {}
        for item in query:
            k, sep, v = item.partition("=")
            if k not in ("seq", "at") or not sep or not _DIGITS_RE.match(v) or k in args:
                raise QueryError("malformed", f"query {item[:40]!r}: use ?seq=N or ?at=UNIXTIME")
            args[k] = int(v)
        return cls(path[0], path[1], args.get("seq"), args.get("at"))


# -- the service ---------------------------------------------------------------------------------


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
        logger: logging.Logger | None = None,
    ) -> None:
        self.journal = journal
        self.contract = contract
        self.known_device = known_device
        self.metrics = metrics
        self.max_inflight = max_inflight
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
            return (
                b'{"v":1,"ok":true,"observation":'
                + entry.envelope
                + b',"submit":null,"submit_refused":'
                + _COMPACT.encode(why).encode()
                + b"}"
            )
        submit = {
            "to": self.contract,
            "function": SUBMIT_SIGNATURE,
            "data": "0x" + submit_calldata(v).hex(),
        }
        return (
            b'{"v":1,"ok":true,"observation":'
            + entry.envelope
            + b',"submit":'
            + _COMPACT.encode(submit).encode()
            + b"}"
        )

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

    async def handle_json(self, payload: bytes, transport: str) -> bytes:
        """A JSON request in, the answer or the error body out."""
        try:
            q = OracleQuery.from_json(payload)
        except QueryError as exc:
            self.refused(exc, transport)
            return exc.body()
        try:
            return await self.answer(q, transport)
        except QueryError as exc:
            return exc.body()

    def refused(self, exc: QueryError, transport: str) -> None:
        self.metrics.inc("oracle_queries", transport=transport, result=exc.code)
        self._rl_log.event(
            (transport, exc.code),
            "oracle_query_refused",
            logging.WARNING if exc.code in ("unavailable", "busy") else logging.INFO,
            transport=transport,
            reason=exc.code,
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


# -- MQTT ----------------------------------------------------------------------------------------


class MqttOracle(MqttResponder):
    """Serves `<prefix>/<gateway>/oracle/req/+` over MQTT 5 (a connection of its own)."""

    name = "oracle-mqtt"

    def __init__(
        self,
        service: OracleService,
        endpoint: BrokerEndpoint,
        *,
        request_topic: str,
        reply_filters: tuple[str, ...],
        client_id: str,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(
            endpoint,
            request_topic=request_topic,
            reply_filters=reply_filters,
            client_id=client_id,
            link="oracle",
            logger=logger or logging.getLogger("agent.oracle.mqtt"),
        )
        self.service = service

    async def serve(
        self, asker: str, payload: bytes, reply_to: str | None, corr: bytes | None, qos: int = 1
    ) -> None:
        # Answers go at QoS 1 whatever the request's QoS (`qos` is not used).
        if reply_to is None:
            self.service.refused(
                QueryError("malformed", "no MQTT 5 Response Topic: nowhere to answer"), "mqtt"
            )
            return
        refusal = self.reply_refusal(asker, reply_to, corr)
        if refusal is not None:
            self.service.refused(QueryError("malformed", refusal[1]), "mqtt")
            return
        answer = await self.service.handle_json(payload, "mqtt")
        publish_json_reply(self.conn.client, reply_to, answer, corr)


# -- CoAP ----------------------------------------------------------------------------------------


class CoapOracle(CoapServer):
    """`GET coap://<bind>/oracle/{device}/{sensor}`, observable: an aiocoap server of its own
    (on its own port: the config refuses one shared with the device source or forwarding)."""

    name = "oracle-coap"
    listening_event = "coap_oracle_listening"

    def __init__(
        self, service: OracleService, host: str, port: int, *, logger: logging.Logger | None = None
    ) -> None:
        super().__init__(host, port, logger or logging.getLogger("agent.oracle.coap"))
        self.service = service

    def site(self) -> Any:
        import aiocoap
        import aiocoap.resource as resource

        from agent.coapsite import DirectSite

        service = self.service
        codes = {
            400: aiocoap.BAD_REQUEST,
            404: aiocoap.NOT_FOUND,
            503: aiocoap.SERVICE_UNAVAILABLE,
        }

        class OracleResource(resource.ObservableResource, resource.PathCapable):  # type: ignore[misc]
            """Every /oracle/{device}/{sensor} path; observations are kept per path."""

            async def add_observation(self, request: aiocoap.Message, serverobs: Any) -> None:
                path = tuple(request.opt.uri_path)
                if len(path) != 2 or request.opt.uri_query:
                    # Only the latest of a sensor is a stream; the rest answer once (accepted
                    # and deregistered at once: aiocoap then sends one final answer).
                    serverobs.accept(lambda: None)
                    serverobs.deregister()
                    return
                # A refused query (unknown device...) ends the observation with its error,
                # and aiocoap calls the cancel then, so no watcher is left behind.
                cancel = service.watch(path[0], path[1], lambda: serverobs.trigger())
                serverobs.accept(cancel)

            async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
                try:
                    q = OracleQuery.from_coap(
                        tuple(request.opt.uri_path), tuple(request.opt.uri_query)
                    )
                except QueryError as exc:
                    service.refused(exc, "coap")
                    return _error(exc)
                try:
                    body = await service.answer(q, "coap")
                except QueryError as exc:  # counted and logged by answer()
                    return _error(exc)
                return aiocoap.Message(
                    code=aiocoap.CONTENT,
                    payload=body,
                    content_format=aiocoap.numbers.ContentFormat.JSON,
                )

        def _error(exc: QueryError) -> aiocoap.Message:
            return aiocoap.Message(
                code=codes.get(exc.status, aiocoap.INTERNAL_SERVER_ERROR),
                payload=exc.body(),
                content_format=aiocoap.numbers.ContentFormat.JSON,
            )

        site = DirectSite()
        site.add_direct("oracle", OracleResource())
        return site
