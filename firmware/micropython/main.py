# The sensor loop: read, sign, send, sleep (lib/edgence/app.py). Ctrl-C leaves it for the REPL.
import machine
from edgence import board, config, watchdog

if watchdog.current() is not None:  # armed by boot.py: not in safe mode, config.json valid
    board.run(config.load("config.json"), machine, watchdog.current())
