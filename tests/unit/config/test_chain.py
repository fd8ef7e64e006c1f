"""[chain] (agent/config/chain.py): the full node's URLs and the agent's own transactions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


def test_chain_is_off_by_default_with_documented_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert not cfg.chain.enabled
    assert cfg.chain.rpc_url == "http://127.0.0.1:8545" and cfg.chain.ws_url is None
    assert cfg.chain.store == tmp_path / "data" / "chain.sqlite"


def test_chain_values_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + '[chain]\nenabled = true\nrpc_url = "http://10.0.0.5:8545"\nws_url = "ws://10.0.0.5:8546"\n'
        'confirmations = 3\ntimeout = "2s"\n',
    )
    assert cfg.chain.ws_url == "ws://10.0.0.5:8546" and cfg.chain.confirmations == 3
    assert cfg.chain.timeout_s == 2.0


@pytest.mark.parametrize(
    "text, key, words",
    [
        ('[chain]\nrpc_url = "ws://x:1"\n', "chain.rpc_url", "http://"),
        ('[chain]\nws_url = "http://x:1"\n', "chain.ws_url", "ws://"),
        ('[chain]\nrpc_url = "http://u:p@x:1"\n', "chain.rpc_url", "credentials"),
        ("[chain]\nconfirmations = 0\n", "chain.confirmations", "between"),
    ],
)
def test_bad_chain_values_are_refused_naming_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    _, msg = refusal(tmp_path, MINIMAL + text)
    assert f"[{key}]" in msg and words in msg, msg
