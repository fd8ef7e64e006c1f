"""The election's ECVRF key, derived from the gateway key (one key file holds both): what the
election signs with, what `masternode register` stores in the registry and `keys` prints."""

from __future__ import annotations

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey

VRF_SECRET_TAG = b"edgence/election/vrf-secret/v1"


def vrf_secret(key: GatewayKey) -> bytes:
    return key.derive_secret(VRF_SECRET_TAG)


def vrf_public_key(key: GatewayKey) -> bytes:
    """The 33-byte compressed ECVRF public key of this gateway."""
    return ecvrf.public_key_of(vrf_secret(key))
