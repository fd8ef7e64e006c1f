"""`devices reset-counter` requests as files: written by the CLI, found by the agent, answered
once; a malformed request is answered as refused instead of being retried forever."""

from __future__ import annotations

from pathlib import Path

from agent.devices.counterreset import answer as answer_request
from agent.devices.counterreset import (
    pending_resets,
    read_answer,
    request_reset,
    requests_dir,
)
from agent.model import Transport


def test_a_request_is_found_answered_and_read_once(tmp_path: Path) -> None:
    first = request_reset(tmp_path, "dev-1", Transport.MQTT)
    second = request_reset(tmp_path, "dev-2", None)
    found = pending_resets(tmp_path)
    assert [(r.device, r.transport) for r in found] == [("dev-1", Transport.MQTT), ("dev-2", None)]
    assert read_answer(first) is None
    answer_request(found[0], {"removed": {"mqtt/dev-1": 7}})
    assert [r.device for r in pending_resets(tmp_path)] == ["dev-2"]
    assert read_answer(first) == {"removed": {"mqtt/dev-1": 7}}
    assert read_answer(first) is None  # the CLI removed it
    assert second.path.exists()


def test_a_malformed_request_is_answered_as_refused_not_retried(tmp_path: Path) -> None:
    request_reset(tmp_path, "dev-1", None)
    bad = requests_dir(tmp_path) / "reset-counter-1-00000000.json"
    bad.write_text('{"device": "no spaces allowed", "transport": null, "requested_at": 1}')
    assert [r.device for r in pending_resets(tmp_path)] == ["dev-1"]
    assert not bad.exists()
    assert "malformed" in bad.with_suffix(".done").read_text()
