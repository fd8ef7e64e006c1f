"""The command service's MQTT 5 request/response side: a request on
`<prefix>/<gateway>/cmd/req/<requester>` is answered on its Response Topic, which must be one of
the requester's own (`cmd/res/<requester>/#`), with its Correlation Data."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from agent.responder import publish_json_reply

if TYPE_CHECKING:
    from agent.downlink.service import Downlink


async def serve_mqtt_request(
    dl: Downlink,
    requester: str,
    payload: bytes,
    reply_to: str | None,
    corr: bytes | None,
    qos: int,
) -> None:
    """Answer one request, or drop it (counted and logged) when it has no acceptable reply
    topic: an answer sent anywhere else could be read by someone other than the requester."""
    if reply_to is None:
        detail = f"no Response Topic under {list(dl.reply_filters)}"
        dl.count_refusal(requester, "-", "-", "no_reply_topic", detail)
        return
    refusal = dl.reply_refusal(requester, reply_to, corr)
    if refusal is not None:
        dl.count_refusal(requester, "-", "-", *refusal)
        return
    answer = await dl.answer_request(requester, payload)
    body = json.dumps(answer, separators=(",", ":")).encode()
    publish_json_reply(dl.conn.client, reply_to, body, corr, qos)


__all__ = ["serve_mqtt_request"]
