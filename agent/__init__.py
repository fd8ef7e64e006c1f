"""edgence-agent: the IoT gateway agent of an Edgence masternode.

Gathers sensor readings, signs them as EIP-712 observations and delivers them durably.
"""

__version__ = "0.1.0"
