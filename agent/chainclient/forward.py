"""dApp JSON-RPC requests forwarded to the colocated full node, over MQTT and CoAP.

`Forwarder` is the policy: JSON-RPC 2.0 single and batch requests, a method allowlist that can
never admit node-control or signing methods, limits on request and response size, batch
length and eth_getLogs block range, and a token bucket per client. What it refuses never
reaches the node; each refusal is a JSON-RPC error object whose `data.reason` is a stable label
(also the counter's label). A node that is down is answered at once with -32002.

Transports (each a thin shell around `Forwarder.handle`, in agent/chainclient/forwardservers.py;
single requests go to the node coalesced into batches, agent/chainclient/coalescer.py):
- MQTT 5: requests on `<prefix>/<gateway>/rpc/req/<name>`, where `<name>` is the asker's broker
  username (the broker's ACL lets each user publish only there: the topic proves who asked);
  the answer goes to the request's Response Topic, which must lie under the asker's own name
  (`<prefix>/<gateway>/rpc/res/<name>[/...]`, readable by that user only), with its
  Correlation Data. MQTT 3.1.1 clients, which have neither, send
  `{"reply_to": TOPIC, "correlation": ID, "request": <JSON-RPC>}` and get
  `{"correlation": ID, "response": <JSON-RPC>}` on TOPIC. The rate limit is per `<name>`.
- CoAP: `POST /rpc` with the JSON-RPC body; the answer is the 2.05 Content payload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.chainclient.coalescer import Coalescer
from agent.chainclient.rpc import ResponseTooLarge, RpcClient
from agent.config.forward import DEFAULT_METHODS, forbidden
from agent.errors import ChainError, NodeUnreachable, RpcTimeout
from agent.logs import RateLimitedLog
from agent.metrics import Metrics
from agent.ratelimit import KeyedBuckets

# JSON-RPC 2.0 and EIP-1474 error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_ALLOWED = -32601
INVALID_PARAMS = -32602
RESOURCE_UNAVAILABLE = -32002
LIMIT_EXCEEDED = -32005

_BLOCK_TAGS_AT_HEAD = ("latest", "pending", "safe", "finalized")


@dataclass(frozen=True)
class ForwardPolicy:
    methods: frozenset[str] = frozenset(DEFAULT_METHODS)
    max_request_bytes: int = 64 * 1024
    max_response_bytes: int = 1024 * 1024
    max_batch: int = 20
    max_log_range: int = 1000
    rate: float = 20.0  # requests per second per client
    burst: int = 40
    timeout_s: float = 5.0
    max_clients: int = 10_000  # buckets kept (least recently seen forgotten first)
    max_inflight: int = 64

    def __post_init__(self) -> None:
        bad = sorted(m for m in self.methods if forbidden(m))
        if bad:
            raise ValueError(f"these methods can never be forwarded: {', '.join(bad)}")


class Refusal(Exception):
    """A request the gateway answers itself with a JSON-RPC error."""

    def __init__(self, code: int, reason: str, message: str, **data: Any) -> None:
        self.code, self.reason, self.message, self.data = code, reason, message, data
        super().__init__(message)

    def error(self, req_id: Any) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": req_id,
            "error": {
                "code": self.code,
                "message": self.message,
                "data": {"reason": self.reason, **self.data},
            },
        }


@dataclass
class _Head:
    number: int = -1
    at: float = -1e18
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Forwarder:
    """Checks a dApp's JSON-RPC payload against the policy and passes what is allowed on."""

    def __init__(
        self,
        rpc: RpcClient,
        policy: ForwardPolicy,
        metrics: Metrics,
        *,
        logger: logging.Logger | None = None,
        down_hold_s: float = 0.5,
        raw_tx_check: Callable[[Any], None] | None = None,
    ) -> None:
        self.rpc = rpc
        # Raises a Refusal for an eth_sendRawTransaction the gateway must not pass on
        # (agent/chainclient/approvals.py: only to approved dApps' contracts).
        self.raw_tx_check = raw_tx_check
        self.policy = policy
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.chainclient.forward")
        self._rl_log = RateLimitedLog(self.log, interval=30.0)
        self.buckets = KeyedBuckets(policy.rate, policy.burst, max_keys=policy.max_clients)
        self._head = _Head()
        self._down_until = 0.0
        self._down_hold = down_hold_s
        self.inflight = 0
        self.coalescer = Coalescer(rpc, policy)

    # -- entry point -------------------------------------------------------------------------
    async def handle(self, client: str, payload: bytes, transport: str) -> bytes | None:
        """The answer to send back (None when the request held only notifications)."""
        try:
            if self.inflight >= self.policy.max_inflight:
                raise Refusal(LIMIT_EXCEEDED, "busy", "the gateway is busy; try again shortly")
            self.inflight += 1
            try:
                answer = await self._handle(client, payload, transport)
            finally:
                self.inflight -= 1
        except Refusal as r:
            self._refused(client, transport, r)
            answer = r.error(None)
        if answer is None or isinstance(answer, bytes):
            return answer
        return json.dumps(answer, separators=(",", ":")).encode()

    async def _handle(self, client: str, payload: bytes, transport: str) -> Any:
        p = self.policy
        if len(payload) > p.max_request_bytes:
            raise Refusal(
                LIMIT_EXCEEDED,
                "request_too_large",
                f"request of {len(payload)} bytes; this gateway takes at most "
                f"{p.max_request_bytes}",
            )
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise Refusal(PARSE_ERROR, "parse_error", "request is not valid JSON") from None
        is_batch = isinstance(body, list)
        items: list[Any] = body if is_batch else [body]
        if is_batch and not items:
            raise Refusal(INVALID_REQUEST, "empty_batch", "empty batch")
        if len(items) > p.max_batch:
            raise Refusal(
                LIMIT_EXCEEDED,
                "batch_too_long",
                f"batch of {len(items)} requests; at most {p.max_batch}",
            )
        wait = self.buckets.take(client, len(items))
        if wait > 0:
            raise Refusal(
                LIMIT_EXCEEDED,
                "rate_limited",
                f"rate limit of {p.rate:g} requests/s (burst {p.burst}) exceeded; slow down",
                retry_after_ms=int(wait * 1000) + 1,
            )
        if not is_batch and isinstance(body, dict) and "id" in body:
            # The common case, a single request: the node's answer (with the client's own id,
            # which the node echoes) goes back byte for byte, without being parsed again.
            try:
                await self._check(body)
            except Refusal as r:
                self._refused(client, transport, r)
                return r.error(body.get("id"))
            self.metrics.inc("forward_requests", transport=transport)
            return await self._forward_one(client, transport, body)
        answers: list[dict[str, Any] | None] = [None] * len(items)
        to_node: list[tuple[int, dict[str, Any]]] = []
        for i, item in enumerate(items):
            try:
                await self._check(item)
                to_node.append((i, item))
            except Refusal as r:
                self._refused(client, transport, r)
                rid = item.get("id") if isinstance(item, dict) else None
                answers[i] = r.error(rid)
        if to_node:
            node_answers = await self._forward(client, transport, [it for _, it in to_node])
            for (i, _), a in zip(to_node, node_answers, strict=True):
                answers[i] = a
        self.metrics.inc("forward_requests", len(to_node), transport=transport)
        out = [a for a, it in zip(answers, items, strict=True) if a is not None and _wants(it)]
        if not out:
            return None
        return out if is_batch else out[0]

    # -- checks ------------------------------------------------------------------------------
    async def _check(self, item: Any) -> None:
        if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
            raise Refusal(INVALID_REQUEST, "invalid_request", "not a JSON-RPC 2.0 request object")
        method = item.get("method")
        if not isinstance(method, str):
            raise Refusal(INVALID_REQUEST, "invalid_request", "method must be a string")
        rid = item.get("id")
        if (rid is not None and not isinstance(rid, str | int)) or isinstance(rid, bool):
            raise Refusal(INVALID_REQUEST, "invalid_request", "id must be a string or a number")
        params = item.get("params", [])
        if not isinstance(params, list | dict):
            raise Refusal(INVALID_PARAMS, "invalid_params", "params must be an array or object")
        if method not in self.policy.methods or forbidden(method):
            raise Refusal(
                METHOD_NOT_ALLOWED,
                "method_not_allowed",
                f"method {method[:64]!r} is not forwarded by this gateway",
            )
        if method == "eth_getLogs":
            await self._check_log_range(params)
        elif method == "eth_sendRawTransaction" and self.raw_tx_check is not None:
            self.raw_tx_check(params)

    async def _check_log_range(self, params: Any) -> None:
        if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], dict):
            raise Refusal(INVALID_PARAMS, "invalid_params", "eth_getLogs takes one filter object")
        flt = params[0]
        if "blockHash" in flt:
            return  # one block
        lo = await self._block_of(flt.get("fromBlock", "latest"))
        hi = await self._block_of(flt.get("toBlock", "latest"))
        span = hi - lo + 1
        if span > self.policy.max_log_range:
            raise Refusal(
                LIMIT_EXCEEDED,
                "log_range_too_wide",
                f"eth_getLogs over {span} blocks; at most {self.policy.max_log_range}",
                max_blocks=self.policy.max_log_range,
            )

    async def _block_of(self, v: Any) -> int:
        if v == "earliest":
            return 0
        if v in _BLOCK_TAGS_AT_HEAD:
            return await self._head_number()
        if isinstance(v, str) and v.startswith("0x"):
            try:
                return int(v, 16)
            except ValueError:
                pass
        raise Refusal(INVALID_PARAMS, "invalid_params", f"bad block number {str(v)[:40]!r}")

    async def _head_number(self) -> int:
        h = self._head
        async with h.lock:
            if time.monotonic() - h.at > 1.0:
                try:
                    h.number = int(await self.rpc.call("eth_blockNumber"), 16)
                except ChainError as exc:
                    raise self._node_refusal(exc) from None
                h.at = time.monotonic()
        return h.number

    # -- the node ----------------------------------------------------------------------------
    def _node_refusal(self, exc: Exception) -> Refusal:
        if isinstance(exc, ResponseTooLarge):
            return Refusal(
                LIMIT_EXCEEDED,
                "response_too_large",
                f"the answer is larger than {self.policy.max_response_bytes} bytes; "
                "ask for less (a narrower block range, fewer items)",
            )
        if isinstance(exc, RpcTimeout):
            return Refusal(RESOURCE_UNAVAILABLE, "node_timeout", "the full node did not answer")
        if isinstance(exc, NodeUnreachable):
            self._down_until = time.monotonic() + self._down_hold
            return Refusal(RESOURCE_UNAVAILABLE, "node_unreachable", "the full node is down")
        return Refusal(RESOURCE_UNAVAILABLE, "node_error", "the full node gave no usable answer")

    async def _forward_one(
        self, client: str, transport: str, item: dict[str, Any]
    ) -> bytes | dict[str, Any]:
        if time.monotonic() < self._down_until:
            r = Refusal(RESOURCE_UNAVAILABLE, "node_unreachable", "the full node is down")
            self._refused(client, transport, r)
            return r.error(item.get("id"))
        # Sent as parsed (never the client's bytes: a duplicate "method" key must not mean one
        # thing to the allowlist and another to the node).
        try:
            raw = await self.coalescer.call(item)
        except ChainError as exc:
            r = self._node_refusal(exc)
            self._refused(client, transport, r)
            return r.error(item.get("id"))
        self._down_until = 0.0
        return raw

    async def _forward(
        self, client: str, transport: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        def refuse_all(r: Refusal) -> list[dict[str, Any]]:
            self._refused(client, transport, r)
            return [r.error(it.get("id")) for it in items]

        if time.monotonic() < self._down_until:
            return refuse_all(
                Refusal(RESOURCE_UNAVAILABLE, "node_unreachable", "the full node is down")
            )
        # Each request goes to the node under an id of our own (its index): clients' ids may
        # repeat within a batch, and notifications have none but their answer must be matched.
        sent = [{**it, "id": k} for k, it in enumerate(items)]
        body = json.dumps(sent[0] if len(sent) == 1 else sent, separators=(",", ":")).encode()
        try:
            raw = await self.rpc.post(
                body,
                max_response_bytes=self.policy.max_response_bytes,
                deadline=self.policy.timeout_s,
            )
        except ChainError as exc:
            return refuse_all(self._node_refusal(exc))
        self._down_until = 0.0
        try:
            answer = json.loads(raw)
        except ValueError:
            return refuse_all(self._node_refusal(ChainError("not JSON")))
        got = answer if isinstance(answer, list) else [answer]
        by_id = {a.get("id"): a for a in got if isinstance(a, dict) and type(a.get("id")) is int}
        if len(sent) == 1 and len(got) == 1 and isinstance(got[0], dict) and 0 not in by_id:
            by_id[0] = got[0]  # a node that answers an error without echoing the id
        out = []
        for k, it in enumerate(items):
            a = by_id.get(k)
            out.append(
                {**a, "id": it.get("id")}
                if a is not None
                else Refusal(RESOURCE_UNAVAILABLE, "node_error", "no answer").error(it.get("id"))
            )
        return out

    def unanswerable(self, transport: str, reason: str, detail: str) -> None:
        """Count and log a request that cannot even be answered (no or a forbidden reply
        address): nothing is sent anywhere."""
        self.metrics.inc("forward_refused", reason=reason, transport=transport)
        self._rl_log.event(
            (transport, reason),
            "forward_refused",
            logging.WARNING,
            transport=transport,
            reason=reason,
            detail=detail[:160],
        )

    def _refused(self, client: str, transport: str, r: Refusal) -> None:
        self.metrics.inc("forward_refused", reason=r.reason, transport=transport)
        self._rl_log.event(
            (client, r.reason),
            "forward_refused",
            logging.WARNING if r.reason.startswith("node_") else logging.INFO,
            client=client[:80],
            transport=transport,
            reason=r.reason,
            detail=r.message[:120],
        )


def _wants(item: Any) -> bool:
    """Requests get answers, notifications (no id member) do not; invalid items get errors."""
    return not isinstance(item, dict) or "id" in item or "method" not in item
