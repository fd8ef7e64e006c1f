"""The requester's side of the command service: one MQTT 5 request on
`<prefix>/<gateway>/cmd/req/<requester>` and its answer on a reply topic of its own (what
`edgence-agent devices command` and bench/command_bench.py use; dApps do the same)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from agent.config import BrokerEndpoint
from agent.errors import AgentError
from agent.requester import MqttRequester


class CommandClient:
    """`async with CommandClient(endpoint, prefix, gateway, requester) as c: await c.send(..)`."""

    def __init__(self, endpoint: BrokerEndpoint, prefix: str, gateway: str, requester: str) -> None:
        self.request_topic = f"{prefix}/{gateway}/cmd/req/{requester}"
        tag = secrets.token_hex(4)
        self.reply_topic = f"{prefix}/{gateway}/cmd/res/{requester}/{tag}"
        self.requester = MqttRequester(
            endpoint,
            client_id=f"edgence-cmd-{requester}-{tag}"[:64],
            reply_filter=self.reply_topic,
            name="command-client",
        )

    async def __aenter__(self) -> CommandClient:
        if not await self.requester.start(10):
            raise AgentError(
                f"no connection to the command broker {self.requester.conn.endpoint.url} "
                "within 10 s",
                fix="check [downlink.mqtt] url, username and password_file",
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.requester.close()

    async def send(self, request: dict[str, Any], wait_s: float) -> dict[str, Any]:
        """Publish one command request; the service's answer (outcome or refusal)."""
        answer = await self.requester.request(
            self.request_topic, json.dumps(request).encode(), self.reply_topic, wait_s
        )
        if answer is None:
            raise AgentError(
                f"no answer from the command service on {self.request_topic} in {wait_s:g} s",
                fix="is the agent running with [downlink] enabled = true?",
            )
        try:
            result: dict[str, Any] = json.loads(answer)
        except ValueError:
            raise AgentError("the command service sent an answer that is not JSON") from None
        return result


__all__ = ["CommandClient"]
