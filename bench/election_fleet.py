"""CPU per epoch per agent, read from the 7 agent processes of the election fleet test
(tests/integration/election/test_fleet.py): /proc/<pid>/stat utime + stime at each epoch's
first block, differenced over consecutive epochs in which the same process ran. Each agent
also ingests and signs the simulated devices' readings (2 devices, 2 readings a second), so
the figure is the whole agent's, not the election's alone.

Baseline measured in the same run: the election's own work for one epoch at n=7 as
bench/election_cost.py simulates it (own ECVRF proof, standings, vrf tally, aggregation of 10
feeds x 7 gateways); the ratio says how much of a real agent's epoch that simulation covers.

Run: python -m bench.record election-fleet -- python -m bench.election_fleet   (1-4 minutes)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.election_cost import aggregation_cpu, simulated_round

TEST = "tests/integration/election/test_fleet.py"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cpu.json"
        env = {**os.environ, "EDGENCE_FLEET_CPU": str(out)}
        run = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"],
            env=env,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0 or not out.exists():
            sys.stderr.write(run.stdout[-4000:] + run.stderr[-2000:])
            return run.returncode or 1
        doc = json.loads(out.read_text())
    samples = sorted(float(s) for s in doc["samples"])
    sim = simulated_round(7)
    parts = ("own ECVRF proof", "registry standings", "vrf tally (verify all proofs, top k)")
    baseline = sum(sim[p] for p in parts) + aggregation_cpu(7)
    epoch_s = doc["epoch_blocks"] * doc["block_gap_s"]
    med = statistics.median(samples)
    p90 = samples[int(0.9 * (len(samples) - 1))]
    print(
        f"Fleet test: {doc['agents']} agents, {doc['devices']} simulated devices, epochs of "
        f"{doc['epoch_blocks']} blocks (a block at least every {doc['block_gap_s']} s, "
        f"about {epoch_s:.0f} s an epoch or longer), {doc['epochs']} epochs sampled, "
        f"{len(samples)} agent-epochs"
    )
    print(f"{'CPU per epoch per agent':<44} {'ms':>9} {'x baseline':>11}")
    for label, v in (
        ("median", med),
        ("90th percentile", p90),
        ("max", samples[-1]),
        ("min", samples[0]),
    ):
        print(f"{label:<44} {v * 1e3:>9.1f} {v / baseline:>11.1f}")
    print(f"{'baseline: election_cost simulation, n=7':<44} {baseline * 1e3:>9.1f} {1:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
