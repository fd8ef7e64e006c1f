"""The signing step alone (ObservationSigner.sign: EIP-712 digest, secp256k1 signature, JSON
envelope) and keccak-256 alone, one core, for this tree and for an earlier tree of the agent
package, alternating in separate processes.

    python -m bench.record sign -- python -m bench.sign_bench --base DIR [--rounds 3]

DIR holds an `agent` package (e.g. `git archive <commit> agent | tar -x -C DIR`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = """
import time
from agent.attest import eip712
from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner
from agent.model import AuthMethod, Eip712Domain, Reading, Transport

signer = ObservationSigner(GatewayKey.generate(), Eip712Domain("e", "2", 1, "0x" + "00" * 20))
readings = [
    Reading(f"dev-{i % 8}", "t", i, -2, "Cel", 1_700_000_000, i // 8 + 1, Transport.MQTT,
            AuthMethod.ALLOWLIST)
    for i in range(20000)
]
t0 = time.process_time()
for i, r in enumerate(readings):
    signer.sign(r, i + 1)
t1 = time.process_time()
data = bytes(416)
for _ in range(40000):
    eip712.keccak256(data)
t2 = time.process_time()
print((t1 - t0) / 20000 * 1e6, (t2 - t1) / 40000 * 1e6)
"""


def probe(source: Path | None) -> tuple[float, float]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        # `python -c` puts the working directory first on sys.path, before PYTHONPATH
        cwd=source or Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        runs["before"].append(probe(args.base))
        runs["after"].append(probe(None))
    print(f"one process each, alternating, {args.rounds} rounds; load {os.getloadavg()[0]:.1f}")
    print("tree     sign µs/obs (median)  runs                 keccak-256 of 416 B µs (median)")
    for name, rs in runs.items():
        sign = statistics.median(r[0] for r in rs)
        kec = statistics.median(r[1] for r in rs)
        print(f"{name:<8} {sign:20.1f}  {', '.join(f'{r[0]:.0f}' for r in rs):<20} {kec:10.2f}")
    b = statistics.median(r[0] for r in runs["before"])
    a = statistics.median(r[0] for r in runs["after"])
    print(f"after / before, signing: {a / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
