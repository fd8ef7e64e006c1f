"""Judging proof-of-service answers, straight from the bytes a masternode would send."""

from __future__ import annotations

import json
import time

from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner
from agent.model import AuthMethod, Eip712Domain, Reading, Transport
from agent.serviceprobe import judge_forward_answer, judge_oracle_answer

DOMAIN = Eip712Domain("Edgence", "1", 31337, "0x" + "11" * 20)


def answer(key: GatewayKey, ts: int) -> bytes:
    r = Reading("dev-1", "temp", 2150, -2, "Cel", ts, 1, Transport.SIMULATED, AuthMethod.ALLOWLIST)
    obs = ObservationSigner(key, DOMAIN).sign(r, 7)
    return b'{"v":1,"ok":true,"observation":' + obs.envelope + b"}"


def test_oracle_answer_passes_only_when_signed_by_the_probed_gateway_and_recent() -> None:
    key, other = GatewayKey.generate(), GatewayKey.generate()
    now = int(time.time())
    assert judge_oracle_answer(answer(key, now - 10), key.address, now=now, max_age_s=60) is None
    assert judge_oracle_answer(answer(other, now), key.address, now=now, max_age_s=60) == (
        "oracle_wrong_signer"
    )
    assert judge_oracle_answer(answer(key, now - 61), key.address, now=now, max_age_s=60) == (
        "oracle_stale"
    )
    assert judge_oracle_answer(answer(key, now + 61), key.address, now=now, max_age_s=60) == (
        "oracle_stale"
    )


def test_oracle_answer_failures_name_the_cause() -> None:
    key = GatewayKey.generate()
    now = int(time.time())
    tampered = answer(key, now).replace(b'"value":"2150"', b'"value":"2151"')
    assert tampered != answer(key, now)
    cases = {
        None: "oracle_no_answer",
        b"{": "oracle_not_json",
        json.dumps({"v": 1, "ok": False, "error": {"code": "no_data"}}).encode(): (
            "oracle_refused:no_data"
        ),
        b'{"v":1,"ok":true,"observation":{"v":1}}': "oracle_bad_signature",
        tampered: "oracle_bad_signature",
    }
    for payload, reason in cases.items():
        assert judge_oracle_answer(payload, key.address, now=now, max_age_s=60) == reason


def test_forward_answer_within_the_lag_passes() -> None:
    ok = json.dumps({"jsonrpc": "2.0", "id": 1, "result": "0x64"}).encode()
    assert judge_forward_answer(ok, head=102, max_lag=5) is None
    assert judge_forward_answer(ok, head=110, max_lag=5) == "forward_lagging"
    assert judge_forward_answer(None, head=100, max_lag=5) == "forward_no_answer"
    error = json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32002}}).encode()
    assert judge_forward_answer(error, head=100, max_lag=5) == "forward_bad_answer"
