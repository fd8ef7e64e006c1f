"""[pipeline] (agent/config/pipeline.py): how far a device's clock may be off."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


def test_the_device_clock_skew_defaults_to_a_day_behind_and_five_minutes_ahead(
    tmp_path: Path,
) -> None:
    skew = load(tmp_path, MINIMAL).pipeline.clock_skew
    assert (skew.past_s, skew.future_s) == (86_400.0, 300.0)
    cfg = load(tmp_path, MINIMAL + '[pipeline]\nmax_ts_age = "2h"\nmax_ts_ahead = 30\n')
    assert (cfg.pipeline.clock_skew.past_s, cfg.pipeline.clock_skew.future_s) == (7200.0, 30.0)


@pytest.mark.parametrize("key", ["max_ts_age", "max_ts_ahead"])
def test_a_bad_clock_skew_is_refused_naming_its_key(tmp_path: Path, key: str) -> None:
    path, message = refusal(tmp_path, MINIMAL + f'[pipeline]\n{key} = "soon"\n')
    assert str(path) in message and f"[pipeline.{key}]" in message and '"7d"' in message
