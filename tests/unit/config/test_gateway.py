"""[gateway] (agent/config/gateway.py): the key file is required, the verifying contract is an
address."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, refusal


@pytest.mark.parametrize("text", ["", "[gateway]\n", "[sources.mqtt]\nqos = 1\n"])
def test_missing_gateway_key_file_is_refused(tmp_path: Path, text: str) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    assert "[gateway.key_file] is required (a string)" in message


@pytest.mark.parametrize(
    "contract", ["0x123", "0x" + "g" * 40, "00" * 20 + "0000", "0x" + "0" * 41]
)
def test_bad_verifying_contract_is_refused(tmp_path: Path, contract: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'verifying_contract = "{contract}"\n')
    assert str(path) in message
    assert "[gateway.verifying_contract] must be 0x followed by 40 hex digits" in message
