"""The destination of raw transactions (every type forwarding may see) and the approval
check's refusals, straight from bytes."""

from __future__ import annotations

import pytest
import rlp

from agent.attest.keys import GatewayKey
from agent.chainclient.approvals import UndecodableTransaction, transaction_destination
from agent.chainclient.tx import Eip1559Tx

TO = "0x" + "5a" * 20
SIG = [1, 2**255, 2**254]


def test_eip1559_destination_and_creation() -> None:
    key = GatewayKey.generate()
    tx = Eip1559Tx(1, 0, 1, 2, 21000, TO, 0, b"\x01").sign(key)
    assert transaction_destination(tx.raw) == TO
    create = Eip1559Tx(1, 0, 1, 2, 21000, None, 0, b"\x60").sign(key)
    assert transaction_destination(create.raw) is None


def test_legacy_access_list_and_blob_transactions() -> None:
    to = bytes.fromhex(TO[2:])
    legacy = rlp.encode([0, 1, 21000, to, 0, b"", 27, 1, 2])
    assert transaction_destination(legacy) == TO
    eip2930 = b"\x01" + rlp.encode([1, 0, 1, 21000, to, 0, b"", [], *SIG])
    assert transaction_destination(eip2930) == TO
    blob = b"\x03" + rlp.encode([1, 0, 1, 2, 21000, to, 0, b"", [], 1, [b"\x01" * 32], *SIG])
    assert transaction_destination(blob) == TO


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x04" + rlp.encode([1, 0, 1, 2, 21000, b"\x5a" * 20, 0, b"", [], [], *SIG]),  # 7702
        b"\x05" + rlp.encode([1]),  # unknown type
        b"\x02" + rlp.encode([1, 2]),  # too few fields
        b"\x02" + rlp.encode([1, 0, 1, 2, 21000, b"\x5a" * 19, 0, b"", []]),  # short address
        b"\x02\xff\xff",  # not RLP
        b"\x02" + rlp.encode([1, 0, 1, 2, 21000, b"\x5a" * 20, 0, b"", []]) + b"\x00",  # trailing
    ],
)
def test_undecodable_or_refused_types_raise(raw: bytes) -> None:
    with pytest.raises(UndecodableTransaction):
        transaction_destination(raw)
