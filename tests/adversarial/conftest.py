"""Hostile-input tests use the integration tests' real peers (Mosquitto, the agent itself)."""

from tests.integration.conftest import (  # noqa: F401  (fixtures, found by name)
    collector,
    start_agent,
    upstream_broker,
)
