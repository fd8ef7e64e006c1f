"""Proof of service from the committee's side: probe a masternode over the upstream broker
(an oracle query that must come back as a correctly signed, recent observation by that
masternode's key; a forwarding request its full node must answer near the prober's own head),
judge the answers, and submit an epoch's verdicts to the ServiceStanding contract.

Judging is pure (`judge_oracle_answer`, `judge_forward_answer`). Which node runs the prober
and when (the elected committee, once per epoch) is the election's wiring, not this module's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.attest.observation import verify_envelope
from agent.chainclient.contractclient import ContractClient
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.config import BrokerEndpoint
from agent.errors import EnvelopeError
from agent.logs import event
from agent.requester import MqttRequester

# -- judging (pure) ------------------------------------------------------------------------------


def judge_oracle_answer(
    payload: bytes | None, gateway: str, *, now: int, max_age_s: int
) -> str | None:
    """None when the answer is a valid observation signed by `gateway` at most `max_age_s`
    old (and not from the future beyond the same margin); else why it fails."""
    if payload is None:
        return "oracle_no_answer"
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "oracle_not_json"
    if not isinstance(doc, dict) or doc.get("ok") is not True:
        code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
        return f"oracle_refused:{code}" if isinstance(code, str) else "oracle_refused"
    try:
        v = verify_envelope(doc.get("observation"))  # type: ignore[arg-type]
    except (EnvelopeError, TypeError, ValueError):
        return "oracle_bad_signature"
    if v.signer.lower() != gateway.lower():
        return "oracle_wrong_signer"
    age = now - v.reading.timestamp
    if age > max_age_s or age < -max_age_s:
        return "oracle_stale"
    return None


def judge_forward_answer(payload: bytes | None, *, head: int, max_lag: int) -> str | None:
    """None when the answer to eth_blockNumber is within `max_lag` blocks of `head`."""
    if payload is None:
        return "forward_no_answer"
    try:
        doc = json.loads(payload)
        number = hex_int(doc["result"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return "forward_bad_answer"
    if abs(head - number) > max_lag:
        return "forward_lagging"
    return None


@dataclass(frozen=True)
class ProbeResult:
    gateway: str
    failures: tuple[str, ...]  # empty: passed

    @property
    def passed(self) -> bool:
        return not self.failures


# -- probing over MQTT 5 -------------------------------------------------------------------------


class ServiceProber:
    """One MQTT 5 connection to the upstream broker; `await probe(gateway)` asks that gateway's
    oracle for `device`/`sensor` and its forwarding for eth_blockNumber, and judges both.
    Use as `async with ServiceProber(...) as p:`."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        rpc: RpcClient,
        *,
        device: str,
        sensor: str,
        prefix: str = "edgence",
        timeout_s: float = 5.0,
        max_age_s: int = 600,
        max_lag: int = 5,
        logger: logging.Logger | None = None,
    ) -> None:
        self.rpc = rpc
        self.device, self.sensor = device, sensor
        self.prefix = prefix
        self.timeout = timeout_s
        self.max_age = max_age_s
        self.max_lag = max_lag
        self.log = logger or logging.getLogger("agent.serviceprobe")
        self.me = f"probe-{uuid.uuid4().hex[:12]}"
        self.requester = MqttRequester(
            endpoint, client_id=self.me, reply_filter=f"{prefix}/+/+/res/{self.me}", name="probe"
        )

    async def __aenter__(self) -> ServiceProber:
        if not await self.requester.start(self.timeout * 2):
            raise TimeoutError(f"no connection to {self.requester.conn.endpoint.url}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.requester.close()

    async def _ask(self, gateway: str, service: str, body: dict[str, Any]) -> bytes | None:
        return await self.requester.request(
            f"{self.prefix}/{gateway}/{service}/req/{self.me}",
            json.dumps(body).encode(),
            f"{self.prefix}/{gateway}/{service}/res/{self.me}",
            self.timeout,
        )

    async def probe(self, gateway: str) -> ProbeResult:
        gateway = gateway.lower()
        oracle, forward = await asyncio.gather(
            self._ask(gateway, "oracle", {"device": self.device, "sensor": self.sensor}),
            self._ask(
                gateway,
                "rpc",
                {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
            ),
        )
        head = hex_int(await self.rpc.call("eth_blockNumber"))
        failures = [
            f
            for f in (
                judge_oracle_answer(oracle, gateway, now=int(time.time()), max_age_s=self.max_age),
                judge_forward_answer(forward, head=head, max_lag=self.max_lag),
            )
            if f is not None
        ]
        result = ProbeResult(gateway, tuple(failures))
        event(
            self.log,
            "service_probe",
            gateway=gateway,
            passed=result.passed,
            failures=",".join(failures) or None,
        )
        return result


async def submit_verdicts(
    rpc: RpcClient,
    sender: TxSender,
    standing: str,
    epoch: int,
    results: Sequence[ProbeResult],
) -> dict[str, Any]:
    """One committee member's verdicts for `epoch` in one ServiceStanding transaction."""
    client = ContractClient(rpc, sender, standing, load_artifact("ServiceStanding"))
    return await client.transact(
        "submitVerdicts", epoch, [r.gateway for r in results], [r.passed for r in results]
    )
