"""Compiled contract artifacts (written by `python -m agent.chainclient.build`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.chainclient.build import ARTIFACTS_DIR
from agent.errors import ChainError


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    deployed_bytecode: bytes

    def function(self, name: str) -> dict[str, Any]:
        for item in self.abi:
            if item.get("type") == "function" and item.get("name") == name:
                return item
        raise ChainError(f"contract {self.name} has no function {name!r}")

    def event(self, name: str) -> dict[str, Any]:
        for item in self.abi:
            if item.get("type") == "event" and item.get("name") == name:
                return item
        raise ChainError(f"contract {self.name} has no event {name!r}")


def load_artifact(name: str, directory: Path = ARTIFACTS_DIR) -> Artifact:
    path = directory / f"{name}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChainError(
            f"contract artifact {path} is missing: build the contracts with "
            "`python -m agent.chainclient.build` (after `npm ci`)"
        ) from None
    return Artifact(
        name=raw["contractName"],
        abi=raw["abi"],
        bytecode=bytes.fromhex(raw["bytecode"].removeprefix("0x")),
        deployed_bytecode=bytes.fromhex(raw["deployedBytecode"].removeprefix("0x")),
    )
