"""Hostile input against the real processes: the integration suite's fixtures (real Mosquitto,
anvil, agents in-process and as child processes) are shared here."""

from tests.integration.conftest import *  # noqa: F403 (fixtures are found by name)
