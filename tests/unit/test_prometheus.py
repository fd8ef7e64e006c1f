"""Every metric the exporter names with a help text is documented in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

from agent.prometheus import COUNTER_HELP, GAUGE_HELP, PREFIX

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented() -> set[str]:
    return set(re.findall(r"`(edgence_[a-z_]+)`", DOC.read_text(encoding="utf-8")))


def test_every_counter_and_gauge_is_in_the_operations_doc() -> None:
    names = documented()
    missing = [f"{PREFIX}{n}_total" for n in COUNTER_HELP if f"{PREFIX}{n}_total" not in names]
    missing += [PREFIX + n for n in GAUGE_HELP if PREFIX + n not in names]
    assert missing == []


def test_collector_metrics_are_in_the_operations_doc() -> None:
    src = (Path(__file__).resolve().parents[2] / "agent" / "prometheus.py").read_text()
    emitted = {PREFIX + n for n in re.findall(r'PREFIX \+ "([a-z_]+)"', src)}
    emitted |= {PREFIX + n for n in re.findall(r'\(\s*"(journal_[a-z_]+)",', src)}
    emitted.discard(PREFIX + "agent")  # the info family; its sample is edgence_agent_info
    assert PREFIX + "journal_backlog" in emitted
    assert sorted(emitted - documented()) == []
