"""[forward] (agent/config/forward.py, with the MQTT 5 / CoAP settings of agent/config/service.py):
defaults, values, and refusals naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.forward import DEFAULT_METHODS
from tests.unit.config.helpers import MINIMAL, load, refusal


def test_forward_is_off_by_default_with_documented_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    assert not cfg.forward.enabled
    assert cfg.forward.methods == DEFAULT_METHODS
    assert cfg.forward.mqtt is not None and cfg.forward.mqtt.protocol == 5
    assert cfg.forward.mqtt.url == cfg.sources.mqtt.broker.url  # the local broker unless told
    assert (cfg.forward.coap_host, cfg.forward.coap_port) == ("127.0.0.1", 5683)
    assert cfg.forward.reply_topics == ("{prefix}/{gateway}/rpc/res/{client}/#",)


def test_forward_values_are_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + '[forward]\nenabled = true\nmethods = ["eth_chainId"]\nmax_request_bytes = "8 KiB"\n'
        "rate = 5\nburst = 10\n"
        '[forward.mqtt]\nurl = "mqtt://127.0.0.1:1999"\n'
        '[forward.coap]\nenabled = true\nbind = "[::]:5684"\n',
    )
    assert cfg.forward.methods == ("eth_chainId",) and cfg.forward.max_request_bytes == 8192
    assert cfg.forward.rate == 5.0 and cfg.forward.burst == 10
    assert cfg.forward.mqtt is not None and cfg.forward.mqtt.port == 1999
    assert (cfg.forward.coap_host, cfg.forward.coap_port) == ("::", 5684)


@pytest.mark.parametrize(
    "text, key, words",
    [
        ('[forward]\nmethods = ["eth_chainId", "debug_traceCall"]\n', "forward.methods", "never"),
        ('[forward]\nmethods = ["eth_sendTransaction"]\n', "forward.methods", "never"),
        ('[forward]\nmethods = ["anvil_mine"]\n', "forward.methods", "never"),
        ("[forward]\nrate = 0\n", "forward.rate", "positive"),
        ('[forward.mqtt]\nprotocol = "3.1.1"\n', "forward.mqtt.protocol", '"5"'),
        ('[forward.mqtt]\nreply_topics = ["#"]\n', "forward.mqtt.reply_topics", "too wide"),
        (
            '[forward.mqtt]\nreply_topics = ["edgence/{gateway}/rpc/res/#"]\n',
            "forward.mqtt.reply_topics",
            "{client}",
        ),
        ('[forward.coap]\nbind = "5683"\n', "forward.coap.bind", "HOST:PORT"),
        ("[forward]\nfoo = 1\n", "forward.foo", "not a known key"),
    ],
)
def test_bad_forward_values_are_refused_naming_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    _, msg = refusal(tmp_path, MINIMAL + text)
    assert f"[{key}]" in msg and words in msg, msg
