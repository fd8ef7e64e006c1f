"""The forwarder's pure parts: the method rules (its per-client rate limit is agent/ratelimit.py,
tested in tests/unit/test_ratelimit.py; reply topics in tests/unit/test_responder.py)."""

from __future__ import annotations

import pytest

from agent.chainclient.forward import ForwardPolicy
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
