"""anvil (npm `@foundry-rs/anvil`, a real Ethereum JSON-RPC node) as a child process on a
loopback port: the embedded default full node of `edgence-agent demo` and the node the tests
start. Like LocalMosquitto it can be killed and started again on the same port.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent.chainclient.build import ROOT
from agent.errors import ChainError
from agent.localbroker import free_port, stop_process

# The first of anvil's well-known development accounts (mnemonic "test test ... junk"): funded
# on every fresh anvil. Public knowledge; only ever used against a local development node.
DEV_PRIVATE_KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
DEV_ADDRESS = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"


def find_anvil(root: Path = ROOT) -> str:
    """The anvil binary: $EDGENCE_ANVIL, the platform package that `npm ci` installed (run
    directly, not through its node wrapper, so that signals reach anvil itself), or PATH."""
    env = os.environ.get("EDGENCE_ANVIL")
    if env:
        return env
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    direct = root / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    if direct.exists():
        return str(direct)
    found = shutil.which("anvil")
    if found:
        return found
    raise ChainError(
        "anvil is not installed (it comes from the npm package @foundry-rs/anvil)",
        fix=f"`npm ci` in {root} (scripts/test and scripts/demo do)",
    )


class LocalAnvil:
    """`with LocalAnvil(dir) as node:` -> node.url. `kill()` / `start()` keep the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        chain_id: int = 31337,
        block_time: float | None = None,
        mining: bool = True,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.chain_id = chain_id
        self.binary = find_anvil()
        self.args = [
            self.binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(chain_id),
            "--accounts",
            "2",
        ]
        if block_time is not None:
            self.args += ["--block-time", str(block_time)]
        if not mining:
            self.args += ["--no-mining"]
        self.args += list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = self.workdir / f"anvil-{self.port}.log"
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rpc(self, method: str, params: list[object] | None = None) -> object:
        """A blocking JSON-RPC call (for fixtures and scripts; the agent uses agent.chainclient)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        req = urllib.request.Request(self.url, body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            out = json.loads(resp.read())
        if "error" in out:
            raise ChainError(f"anvil {method}: {out['error']}")
        return out["result"]

    def start(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChainError(
                    f"anvil exited with code {self.proc.returncode}; "
                    f"see {self.logfile}: {self.logfile.read_text()[-400:]}"
                )
            try:
                self.rpc("eth_chainId")
                return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.05)
        self.stop()
        raise ChainError(f"anvil did not answer on {self.url} within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the node vanishes mid-traffic, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> LocalAnvil:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
