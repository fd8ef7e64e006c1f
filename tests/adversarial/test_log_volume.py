"""A device cannot make the agent write a log line per packet: a multi-block CoAP POST (Block1,
each continuation answered 2.31) is one request, signed once, and its continuations log nothing
at info (aiocoap logs each at info by itself). Real aiocoap client against the real agent."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from tests.integration.test_coap_source import coap_config, free_udp_port


async def test_block1_continuations_are_not_info_lines(
    upstream_broker: LocalMosquitto, start_agent: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_udp_port()
    running = await start_agent(coap_config(upstream_broker, port))
    body = encode_frame(1, [("temperature", 2137, -2, "Cel")], timestamp=int(time.time()))
    payload = body[:-1] + b" " * 3000 + body[-1:]  # valid JSON, three 1 KiB blocks
    ctx = await aiocoap.Context.create_client_context()
    caplog.set_level(logging.DEBUG)
    try:
        msg = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/up/dev-1")
        msg.payload = payload
        msg.opt.content_format = 50
        answer = await ctx.request(msg).response
    finally:
        await ctx.shutdown()
    assert answer.code == Code.CHANGED
    assert running.agent.metrics.get("observations_signed") == 1
    continuations = [r for r in caplog.records if "renderable error" in r.getMessage()]
    assert len(continuations) >= 2, "no Block1 continuation happened: the test proves nothing"
    assert all(r.levelno == logging.DEBUG for r in continuations), [
        (r.levelname, r.getMessage()) for r in continuations
    ]
