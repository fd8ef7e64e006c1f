"""[pipeline]: the bounded queue between the sources and signing, and how readings are batched."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.reader import Section


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    queue_size: int = 20_000
    batch_max: int = 256
    linger_s: float = 0.002


def read_pipeline(p: Section) -> PipelineConfig:
    P = PipelineConfig
    cfg = PipelineConfig(
        queue_size=p.int_range("queue_size", P.queue_size, 16, 1_000_000),
        batch_max=p.int_range("batch_max", P.batch_max, 1, 4096),
        linger_s=p.int_range("linger_ms", round(P.linger_s * 1000), 0, 100) / 1000,
    )
    p.done()
    return cfg
