"""Checks spanning tables (agent/config/checks.py): CoAP servers on one port, an election
without the full node or a broker, on-chain oracle submission without [chain] or a contract."""

from __future__ import annotations

from pathlib import Path

from tests.unit.config.helpers import MINIMAL, load, refusal

BOARD = "0x" + "Ab" * 20
CHAIN_ON = "[chain]\nenabled = true\n"
FORWARD_COAP = (
    '[forward]\nenabled = true\n[forward.coap]\nenabled = true\nbind = "127.0.0.1:5683"\n'
)
ORACLE_COAP = '[oracle]\nenabled = true\n[oracle.coap]\nenabled = true\nbind = "0.0.0.0:5683"\n'


def test_coap_source_and_coap_forwarding_on_one_port_are_refused(tmp_path: Path) -> None:
    path, msg = refusal(tmp_path, MINIMAL + "[sources.coap]\nenabled = true\n" + FORWARD_COAP)
    assert str(path) in msg
    assert "[forward.coap.bind]" in msg and "[sources.coap]" in msg and "own port" in msg
    cfg = load(tmp_path, MINIMAL + "[sources.coap]\nenabled = true\nport = 5700\n" + FORWARD_COAP)
    assert (cfg.sources.coap.port, cfg.forward.coap_port) == (5700, 5683)


def test_oracle_coap_server_may_not_share_the_sources_port(tmp_path: Path) -> None:
    _, msg = refusal(tmp_path, MINIMAL + "[sources.coap]\nenabled = true\n" + ORACLE_COAP)
    assert "[oracle.coap.bind]" in msg and "UDP port 5683" in msg
    cfg = load(tmp_path, MINIMAL + "[sources.coap]\nenabled = true\nport = 5700\n" + ORACLE_COAP)
    assert (cfg.sources.coap.port, cfg.oracle.coap_port) == (5700, 5683)


def test_oracle_and_forwarding_coap_servers_may_not_share_a_port(tmp_path: Path) -> None:
    text = MINIMAL + FORWARD_COAP + ORACLE_COAP
    _, msg = refusal(tmp_path, text)
    assert "[oracle.coap.bind]" in msg and "[forward.coap]" in msg and "own port" in msg
    cfg = load(tmp_path, text.replace('"0.0.0.0:5683"', '"0.0.0.0:5684"'))
    assert (cfg.forward.coap_port, cfg.oracle.coap_port) == (5683, 5684)


def test_a_coap_server_that_does_not_run_clashes_with_nothing(tmp_path: Path) -> None:
    # [oracle.coap] enabled but the oracle itself off: its server never starts.
    cfg = load(tmp_path, MINIMAL + FORWARD_COAP + ORACLE_COAP.replace("enabled = true\n[", "["))
    assert not cfg.oracle.enabled and cfg.oracle.coap_port == cfg.forward.coap_port


def test_enabled_election_needs_the_chain(tmp_path: Path) -> None:
    _, msg = refusal(tmp_path, MINIMAL + f'[election]\nenabled = true\nboard = "{BOARD}"\n')
    assert "[election.enabled]" in msg and "[chain] enabled = true" in msg


def test_without_the_bridge_election_results_need_their_own_broker(tmp_path: Path) -> None:
    _, msg = refusal(
        tmp_path,
        MINIMAL
        + CHAIN_ON
        + "[bridge]\nenabled = false\n"
        + f'[election]\nenabled = true\nboard = "{BOARD}"\n',
    )
    assert "[election.mqtt]" in msg
    cfg = load(
        tmp_path,
        MINIMAL
        + CHAIN_ON
        + "[bridge]\nenabled = false\n"
        + f'[election]\nenabled = true\nboard = "{BOARD}"\n'
        + '[election.mqtt]\nurl = "mqtt://127.0.0.1:1885"\n',
    )
    assert cfg.election.enabled and cfg.election.mqtt is not None


def test_oracle_submission_needs_the_chain_and_the_oracle_contract(tmp_path: Path) -> None:
    submit = '[oracle.submit]\nenabled = true\nsensors = ["dev-1/temp"]\n'
    _, msg = refusal(tmp_path, MINIMAL + submit)
    assert "[oracle.submit.enabled]" in msg and "[chain]" in msg
    _, msg = refusal(tmp_path, MINIMAL + CHAIN_ON + submit)
    assert "[oracle.submit.enabled]" in msg and "gateway.verifying_contract" in msg
