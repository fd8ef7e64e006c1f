"""[pipeline]: the bounded queue between the sources and signing, and how readings are batched."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config.reader import Section
from agent.model import ClockSkew


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    queue_size: int = 20_000
    batch_max: int = 256
    linger_s: float = 0.002
    # How far a device's timestamp may lag or lead this clock ([pipeline] max_ts_age/ahead).
    clock_skew: ClockSkew = field(default_factory=ClockSkew)


def read_pipeline(p: Section) -> PipelineConfig:
    P = PipelineConfig
    cfg = PipelineConfig(
        queue_size=p.int_range("queue_size", P.queue_size, 16, 1_000_000),
        batch_max=p.int_range("batch_max", P.batch_max, 1, 4096),
        linger_s=p.int_range("linger_ms", round(P.linger_s * 1000), 0, 100) / 1000,
        clock_skew=ClockSkew(
            past_s=p.duration("max_ts_age", ClockSkew().past_s),
            future_s=p.duration("max_ts_ahead", ClockSkew().future_s),
        ),
    )
    p.done()
    return cfg
