"""`python -m agent.cli`: the same as the `edgence-agent` command."""

import sys

from agent.cli import main

sys.exit(main())
