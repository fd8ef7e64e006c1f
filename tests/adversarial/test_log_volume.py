"""Hostile load does not become a log line per packet or per commit: a multi-block CoAP POST
(Block1, each continuation answered 2.31) is one request, signed once, and its continuations log
nothing at info (aiocoap logs each at info by itself); a journal that drops on every commit logs
one line and a summary. Real aiocoap client against the real agent; the real sqlite journal."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from agent.devices.codecs.frame import encode_frame
from agent.journal import Journal
from agent.localbroker import LocalMosquitto
from tests.integration.test_coap_source import coap_config, free_udp_port
from tests.unit.journal.test_journal import ROW, append_new


async def test_block1_continuations_are_not_info_lines(
    upstream_broker: LocalMosquitto, start_agent: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_udp_port()
    cfg = coap_config(upstream_broker, port)
    cfg["metrics"] = {"listen": "127.0.0.1:0"}  # several agents run on this machine at once
    running = await start_agent(cfg)
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


async def test_a_full_journal_logs_one_drop_line_and_a_summary_not_one_per_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """200 commits into a journal full of undelivered observations (drop-oldest): each commit
    drops one; the log has the first drop and one summary whose counts add up to all of them."""
    caplog.set_level(logging.WARNING, logger="agent.journal")
    async with Journal(
        tmp_path / "journal.sqlite", sinks=["bridge"], max_bytes=10 * ROW, overflow="drop-oldest"
    ) as journal:
        for _ in range(210):
            await append_new(journal, 1)
    lines = [r.getMessage() for r in caplog.records if "event=journal_drop" in r.getMessage()]
    assert len(lines) == 2, lines
    counts = [int(re.search(r"dropped=(\d+)", x).group(1)) for x in lines]  # type: ignore[union-attr]
    assert sum(counts) == 200
    assert lines[0].endswith("dropped=1 seq_from=1 seq_to=1 reason=max_bytes")
    assert lines[1].endswith("dropped=199 seq_from=2 seq_to=200 reason=max_bytes commits=199")
