"""`doctor`'s service check: a masternode must answer proof-of-service probes on the upstream
broker with its oracle and its forwarding, or the elected committee fails it every epoch."""

from __future__ import annotations

from pathlib import Path

from agent.cli.checks import check_service
from tests.unit.config.helpers import MINIMAL, load

MN = f'[masternode]\nregistry = "0x{"ab" * 20}"\n[bridge]\nurl = "mqtt://up.example:1883"\n'
UP = '[oracle]\nenabled = true\n[oracle.mqtt]\nurl = "mqtt://up.example:1883"\n'
FWD = '[forward]\nenabled = true\n[forward.mqtt]\nurl = "mqtt://up.example:1883"\n'


def test_a_node_that_is_no_masternode_is_skipped(tmp_path: Path) -> None:
    assert check_service(load(tmp_path, MINIMAL)).status == "skip"


def test_oracle_and_forwarding_on_the_upstream_broker_pass(tmp_path: Path) -> None:
    c = check_service(load(tmp_path, MINIMAL + MN + UP + FWD))
    assert c.status == "ok" and "up.example:1883" in c.detail


def test_a_missing_or_local_endpoint_is_named_with_its_key(tmp_path: Path) -> None:
    c = check_service(load(tmp_path, MINIMAL + MN + UP))
    assert c.status == "warn" and c.fix == "set forward.enabled = true with forward.mqtt"
    local = '[oracle]\nenabled = true\n[oracle.mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
    c = check_service(load(tmp_path, MINIMAL + MN + local + FWD))
    assert c.status == "warn" and c.fix is not None and c.fix.startswith("set oracle.mqtt.url")
