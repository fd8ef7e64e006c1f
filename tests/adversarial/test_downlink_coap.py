"""Hostile CoAP requesters against the command service (/cmd) on real aiocoap and Mosquitto:
an unknown device, an action the policy does not give the requester, a TTL already ended or
ending before the device answers, an oversize body (in one datagram or block-wise), and a
flood; each a clear CoAP error naming the reason, counted, and nothing executed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
import pytest

from agent.downlink.requests import MAX_REQUEST_BYTES
from agent.localbroker import LocalMosquitto
from tests.integration.test_downlink_coap import DEVICE, ME, CoapCommandRig, coap_command_rig


@pytest.fixture
async def coap_rig(tmp_path: Path, local_broker: LocalMosquitto) -> AsyncIterator[CoapCommandRig]:
    async with coap_command_rig(tmp_path, local_broker) as rig:
        yield rig


def refused(rig: CoapCommandRig, reason: str) -> float:
    return rig.metrics.get("commands_refused", reason=reason)


async def test_unknown_device_is_4_04_and_counted(coap_rig: CoapCommandRig) -> None:
    code, out = await coap_rig.post({"device": "nobody", "action": "open", "ttl": 5})
    assert (code, out["ok"], out["error"]) == ("4.04", False, "unknown_device")
    assert "not enrolled" in out["detail"]
    assert refused(coap_rig, "unknown_device") == 1


async def test_an_action_the_policy_does_not_give_is_4_03_naming_what_is_allowed(
    coap_rig: CoapCommandRig,
) -> None:
    code, out = await coap_rig.post({"device": DEVICE, "action": "reboot", "ttl": 5})
    assert (code, out["error"]) == ("4.03", "not_allowed")
    assert ME in out["detail"] and "['open']" in out["detail"]
    assert refused(coap_rig, "not_allowed") == 1
    assert coap_rig.board.dl.last == 0  # nothing reached the device


async def test_an_ended_ttl_is_refused_and_a_device_offline_past_its_ttl_is_5_04(
    coap_rig: CoapCommandRig,
) -> None:
    code, out = await coap_rig.post({"device": DEVICE, "action": "open", "ttl": 0})
    assert (code, out["error"]) == ("4.00", "expired")
    # gate-2 is enrolled but never connects: the TTL ends, the requester is told.
    code, out = await coap_rig.post({"device": "gate-2", "action": "open", "ttl": 1})
    assert (code, out["error"]) == ("5.04", "device_offline")
    assert "did not answer before the TTL ended" in out["detail"]
    assert coap_rig.metrics.get("commands_expired", reason="device_offline") == 1
    assert coap_rig.board.ran == []


async def test_an_oversize_body_is_4_13_in_one_datagram_or_block_wise(
    coap_rig: CoapCommandRig,
) -> None:
    padding = "x" * (MAX_REQUEST_BYTES + 100)
    body = f'{{"device":"{DEVICE}","action":"open","args":{{"p":"{padding}"}}}}'.encode()
    code, out = await coap_rig.post(body)  # aiocoap sends it block-wise (Block1)
    assert (code, out["error"]) == ("4.13", "oversize")
    assert refused(coap_rig, "oversize") == 1
    assert coap_rig.board.ran == []


async def test_a_flood_from_one_requester_is_answered_4_29_with_max_age(
    coap_rig: CoapCommandRig,
) -> None:
    assert coap_rig.ctx is not None
    codes = []
    for _ in range(40):
        req = aiocoap.Message(
            code=aiocoap.POST, uri=coap_rig.uri, payload=b'{"device":"x","action":"y"}'
        )
        resp = await coap_rig.ctx.request(req).response
        codes.append(resp.code.dotted)
        if resp.code.dotted == "4.29":
            assert resp.opt.max_age is not None and resp.opt.max_age >= 1
    assert "4.29" in codes
    assert codes[0] == "4.03"  # the first ones were read (and refused by the policy)
    assert refused(coap_rig, "rate_limited") == codes.count("4.29")
