"""The forwarder's pure parts: the method rules, token buckets (with explicit times: a fake
clock, since waiting for real time would make the test slow and timing-dependent), topic
filters for replies."""

from __future__ import annotations

import pytest

from agent.chainclient.forward import ForwardPolicy, TokenBuckets, topic_matches
from agent.config.forward import DEFAULT_METHODS, forbidden


@pytest.mark.parametrize(
    "method",
    [
        "admin_addPeer",
        "debug_traceTransaction",
        "personal_sign",
        "miner_setEtherbase",
        "anvil_setBalance",
        "evm_revert",
        "hardhat_impersonateAccount",
        "eth_sign",
        "eth_signTransaction",
        "eth_signTypedData_v4",
        "eth_sendTransaction",
        "engine_newPayloadV3",
    ],
)
def test_forbidden_methods_are_refused_even_when_configured(method: str) -> None:
    assert forbidden(method)
    with pytest.raises(ValueError, match="can never be forwarded"):
        ForwardPolicy(methods=frozenset({"eth_chainId", method}))


def test_default_allowlist_has_reads_and_raw_transactions_only() -> None:
    assert not [m for m in DEFAULT_METHODS if forbidden(m)]
    assert {"eth_call", "eth_getLogs", "eth_sendRawTransaction", "eth_feeHistory"} <= set(
        DEFAULT_METHODS
    )


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    b = TokenBuckets(rate=2.0, burst=4, max_clients=10)
    assert [b.take("a", now=0.0) for _ in range(4)] == [0.0] * 4
    assert b.take("a", now=0.0) == pytest.approx(0.5)  # empty: half a second per token
    assert b.take("b", now=0.0) == 0.0  # another client has its own bucket
    assert b.take("a", now=0.5) == 0.0  # one token back after 0.5 s
    assert b.take("a", 3, now=0.5) > 0  # a batch needs a token per request
    assert b.take("a", 3, now=10.0) == 0.0  # refilled, capped at the burst


def test_token_buckets_forget_the_least_recently_seen_clients() -> None:
    b = TokenBuckets(rate=1.0, burst=1, max_clients=2)
    b.take("a", now=0.0)
    b.take("b", now=0.0)
    b.take("c", now=0.0)
    assert b.take("a", now=0.0) == 0.0  # forgotten, so a fresh bucket
    assert b.take("c", now=0.0) > 0


def test_reply_topic_filters() -> None:
    f = "edgence/0xab/rpc/res/#"
    assert topic_matches(f, "edgence/0xab/rpc/res/app-1")
    assert not topic_matches(f, "edgence/0xab/obs/dev/temp")
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/c/d")
