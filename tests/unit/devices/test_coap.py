"""How the CoAP source answers the pipeline's verdicts, and how it finds OSCORE devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiocoap.numbers.codes import Code

from agent.devices.coap import oscore_devices
from agent.devices.coapresources import code_for_rejection
from agent.errors import ConfigError, KeyFileError


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("unknown_device", Code.UNAUTHORIZED),
        ("missing_mac", Code.UNAUTHORIZED),
        ("bad_mac", Code.UNAUTHORIZED),
        ("revoked", Code.UNAUTHORIZED),
        ("not_active", Code.UNAUTHORIZED),
        ("wrong_transport", Code.UNAUTHORIZED),
        ("replay", Code.BAD_REQUEST),
        ("bad_value", Code.BAD_REQUEST),
        ("rate_limited", Code.TOO_MANY_REQUESTS),
        ("journal_full", Code.SERVICE_UNAVAILABLE),
    ],
)
def test_each_refusal_reason_has_its_response_code(reason: str, code: Code) -> None:
    assert code_for_rejection(reason) == code


def test_oscore_devices_are_the_context_directories_with_private_secrets(tmp_path: Path) -> None:
    for dev in ("dev-a", "dev-b"):
        (tmp_path / dev).mkdir()
        (tmp_path / dev / "secret.json").write_text("{}")
        os.chmod(tmp_path / dev / "secret.json", 0o600)
    (tmp_path / "README").write_text("not a context")
    assert oscore_devices(tmp_path, "agent.toml") == {"dev-a", "dev-b"}
    assert oscore_devices(None, "agent.toml") == frozenset()


def test_a_readable_oscore_secret_or_a_bad_directory_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dev-a").mkdir()
    (tmp_path / "dev-a" / "secret.json").write_text("{}")
    os.chmod(tmp_path / "dev-a" / "secret.json", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        oscore_devices(tmp_path, "agent.toml")
    os.chmod(tmp_path / "dev-a" / "secret.json", 0o600)
    (tmp_path / "not a device").mkdir()
    with pytest.raises(ConfigError, match=r"sources\.coap\.oscore_dir"):
        oscore_devices(tmp_path, "agent.toml")
    with pytest.raises(ConfigError, match="not a directory"):
        oscore_devices(tmp_path / "missing", "agent.toml")
