"""Run a benchmark script and record its printed table in bench/RESULTS.md.

python -m bench.record journal -- python bench/journal_bench.py
python -m bench.record election -- python bench/election_bench.py
"""

from __future__ import annotations

import subprocess
import sys

from bench.results import write_section


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    name, command = argv[0], argv[2:]
    run = subprocess.run(command, capture_output=True, text=True)
    sys.stdout.write(run.stdout)
    sys.stderr.write(run.stderr)
    if run.returncode != 0:
        return run.returncode
    shown = " ".join(
        "python" if c == sys.executable or c.endswith("/python") else c for c in command
    )
    write_section(
        name, f"python -m bench.record {name} -- {shown}", "```\n" + run.stdout.rstrip() + "\n```\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
