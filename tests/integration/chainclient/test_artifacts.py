"""The compiled contract artifacts ship inside the package (committed under
agent/resources/contracts): a fresh solcjs build of contracts/*.sol must equal them byte for
byte, and the check that CI runs (`python -m agent.chainclient.build --check`) notices when
they do not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from agent.chainclient.build import ARTIFACTS_DIR, CONTRACTS_DIR, ROOT, check


def test_shipped_artifacts_equal_a_fresh_build_and_are_committed() -> None:
    assert check() == []
    names = sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json"))
    assert names == sorted(
        [
            "ConsumerExample",
            "Counter",
            "DappRegistry",
            "ElectionBoard",
            "IElectionCommittee",
            "IServiceStanding",
            "MasternodeRegistry",
            "ObservationOracle",
            "RewardPool",
            "ServiceStanding",
        ]
    )
    if (ROOT / ".git").exists():
        tracked = subprocess.run(
            ["git", "ls-files", "--", str(ARTIFACTS_DIR.relative_to(ROOT))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert sorted(Path(t).stem for t in tracked if t.endswith(".json")) == names


def test_check_names_each_artifact_that_differs_is_missing_or_is_extra(tmp_path: Path) -> None:
    shipped = tmp_path / "contracts"
    shutil.copytree(ARTIFACTS_DIR, shipped)
    oracle = shipped / "ObservationOracle.json"
    text = oracle.read_text()
    tampered = text.replace('"abi": [', '"abi": [{"type": "fallback"}, ', 1)
    assert tampered != text
    oracle.write_text(tampered)
    (shipped / "Counter.json").unlink()
    (shipped / "Old.json").write_text("{}")
    assert check(CONTRACTS_DIR, shipped) == [
        "Counter.json: missing (a fresh build makes it)",
        "Old.json: no contract source builds it",
        "ObservationOracle.json: differs from a fresh build of the sources",
    ]
