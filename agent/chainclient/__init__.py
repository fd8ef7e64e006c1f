"""Ethereum JSON-RPC client for the colocated full node, the agent's own transactions, and the
forwarding of dApp requests (see the modules: rpc, subscribe, tx, sender, forward)."""
