"""Which JSON-RPC methods dApps may have forwarded to the full node (pure data)."""

from __future__ import annotations

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
