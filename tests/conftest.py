"""Shared pytest fixtures: where the project root and the shared test vectors are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def vectors_path() -> Path:
    """The public known-answer vectors beside the checkout (../shared/vectors)."""
    return Path(os.environ.get("EDGENCE_VECTORS", ROOT.parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """Skip when the vectors are not beside this checkout; .ci/run sets EDGENCE_REQUIRE_VECTORS
    so that in CI a missing folder fails instead of skipping."""
    path = vectors_path()
    if not path.is_dir():
        if os.environ.get("EDGENCE_REQUIRE_VECTORS"):
            pytest.fail(f"test vectors missing at {path} (EDGENCE_REQUIRE_VECTORS is set)")
        pytest.skip(f"shared test vectors not found at {path}")
    return path
