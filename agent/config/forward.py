"""[forward]: dApp JSON-RPC requests passed to the full node over MQTT 5 and CoAP, and which
methods may ever be forwarded (pure data, also used by the forwarder itself)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.reader import Section
from agent.config.service import RequestResponseConfig, read_request_response

# Never forwarded, whatever the configuration says: node administration, debugging and
# tracing, keys held by the node, mining control, development-node state control.
FORBIDDEN_PREFIXES = (
    "admin_",
    "debug_",
    "personal_",
    "miner_",
    "anvil_",
    "hardhat_",
    "evm_",
    "engine_",
    "clique_",
    "eth_sign",  # eth_sign, eth_signTransaction, eth_signTypedData*
)
FORBIDDEN_METHODS = frozenset({"eth_sendTransaction", "eth_subscribe", "eth_unsubscribe"})

DEFAULT_METHODS = (
    "eth_chainId",
    "net_version",
    "web3_clientVersion",
    "eth_syncing",
    "eth_blockNumber",
    "eth_getBlockByNumber",
    "eth_getBlockByHash",
    "eth_getBalance",
    "eth_getCode",
    "eth_getStorageAt",
    "eth_getTransactionCount",
    "eth_getTransactionByHash",
    "eth_getTransactionReceipt",
    "eth_call",
    "eth_estimateGas",
    "eth_getLogs",
    "eth_gasPrice",
    "eth_maxPriorityFeePerGas",
    "eth_feeHistory",
    "eth_sendRawTransaction",
)


def forbidden(method: str) -> bool:
    return method in FORBIDDEN_METHODS or method.startswith(FORBIDDEN_PREFIXES)


@dataclass(frozen=True, kw_only=True)
class ForwardConfig(RequestResponseConfig):
    """[forward]: dApp JSON-RPC requests passed to the full node over MQTT 5 and CoAP."""

    enabled: bool = False
    methods: tuple[str, ...] = DEFAULT_METHODS
    max_request_bytes: int = 64 * 1024
    max_response_bytes: int = 1024 * 1024
    max_batch: int = 20
    max_log_range: int = 1000
    timeout_s: float = 5.0
    reply_topics: tuple[str, ...] = ("{prefix}/{gateway}/rpc/res/{client}/#",)


def read_forward(f: Section, local_broker_url: str) -> ForwardConfig:
    F = ForwardConfig
    methods = f.str_list("methods", F.methods)
    for mth in methods:
        if forbidden(mth):
            raise f.err(
                "methods",
                f"{mth!r} can never be forwarded (node administration, debugging, keys held by "
                "the node, mining or development-node control)",
            )
    shared = read_request_response(f, F, local_broker_url)
    cfg = ForwardConfig(
        enabled=f.get("enabled", bool, F.enabled),
        methods=methods,
        max_request_bytes=f.size("max_request_bytes", F.max_request_bytes),
        max_response_bytes=f.size("max_response_bytes", F.max_response_bytes),
        max_batch=f.int_range("max_batch", F.max_batch, 1, 1000),
        max_log_range=f.int_range("max_log_range", F.max_log_range, 1, 1_000_000),
        timeout_s=f.duration("timeout", F.timeout_s),
        **shared,
    )
    f.done()
    return cfg
