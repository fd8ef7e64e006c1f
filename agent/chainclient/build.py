"""The contracts build step: compiles `contracts/*.sol` with solcjs (npm `solc`, pinned in
package.json) into one JSON artifact per contract (ABI, creation and runtime bytecode) under
`agent/resources/contracts/`, where `agent.chainclient.contracts` loads them.

    python -m agent.chainclient.build [--contracts DIR] [--out DIR] [--force | --check]

The artifacts are committed and ship inside the package, so every install path (pip, wheel,
scripts/install) has them without Node.js. `--check` compiles afresh into a temporary
directory and fails unless the committed artifacts are byte-identical (scripts/test, so CI,
runs it); after changing a contract, run the build and commit its artifacts with it. The plain
build compiles again only when a source, the compiler version or the settings changed (an
uncommitted stamp file holds their hash).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import ChainError

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = ROOT / "contracts"
ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "resources" / "contracts"
STAMP = ".build-stamp"
EVM_VERSION = "cancun"  # what anvil, geth and reth run today
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": EVM_VERSION,
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"]}
    },
}


class BuildError(ChainError):
    """The contracts could not be compiled (solcjs missing, a Solidity error)."""


def node_bin(name: str, root: Path = ROOT) -> Path:
    """A command from the project's node_modules/.bin, or a clear error saying how to get it."""
    path = root / "node_modules" / ".bin" / name
    if not path.exists():
        raise BuildError(
            f"{path} is missing", fix=f"`npm ci` in {root} (scripts/test and scripts/demo do)"
        )
    return path


def solc_version(root: Path = ROOT) -> str:
    out = subprocess.run(
        [str(node_bin("solcjs", root)), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]


def _standard_input(sources: dict[str, str]) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sorted(sources.items())},
        "settings": SETTINGS,
    }


def _run_solcjs(std_input: dict[str, Any], root: Path) -> dict[str, Any]:
    # stdout goes to a file, not a pipe: node exits before a pipe has taken more than 64 KiB
    # of solcjs's output, which cut the JSON of larger contract sets short.
    with tempfile.TemporaryFile() as out_file:
        proc = subprocess.run(
            [str(node_bin("solcjs", root)), "--standard-json"],
            input=json.dumps(std_input).encode(),
            stdout=out_file,
            stderr=subprocess.PIPE,
            timeout=300,
        )
        out_file.seek(0)
        text = out_file.read().decode("utf-8", errors="replace")
    proc_stderr = proc.stderr.decode("utf-8", errors="replace")
    # solcjs prints notes such as ">>> Cannot retry compilation with SMT ..." before the JSON.
    start = text.find("\n{") + 1 if not text.startswith("{") else 0
    try:
        out: dict[str, Any] = json.loads(text[start:])
    except ValueError:
        raise BuildError(
            f"solcjs gave no JSON output (exit {proc.returncode}): {(proc_stderr or text)[-800:]}"
        ) from None
    return out


def build(
    contracts_dir: Path = CONTRACTS_DIR,
    out_dir: Path = ARTIFACTS_DIR,
    *,
    force: bool = False,
    root: Path = ROOT,
) -> list[Path]:
    """Compile every contracts_dir/*.sol; returns the artifact paths (written or up to date)."""
    files = sorted(contracts_dir.glob("*.sol"))
    if not files:
        raise BuildError(f"no *.sol files in {contracts_dir}")
    sources = {f.name: f.read_text(encoding="utf-8") for f in files}
    version = solc_version(root)
    std_input = _standard_input(sources)
    digest = hashlib.sha256(
        json.dumps({"v": version, "in": std_input}, sort_keys=True).encode()
    ).hexdigest()
    stamp = out_dir / STAMP
    if not force and stamp.exists():
        known = json.loads(stamp.read_text())
        paths = [out_dir / f"{n}.json" for n in known.get("contracts", [])]
        if known.get("hash") == digest and all(p.exists() for p in paths):
            return paths
    out = _run_solcjs(std_input, root)
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise BuildError(
            "solc: " + "\n".join(e.get("formattedMessage", e.get("message", "?")) for e in errors)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names: list[str] = []
    for source, contracts in sorted(out.get("contracts", {}).items()):
        for name, c in sorted(contracts.items()):
            if name in names:
                raise BuildError(f"two contracts are named {name}: names must be unique")
            artifact = {
                "contractName": name,
                "sourceName": f"contracts/{source}",
                "compiler": {"name": "solcjs", "version": version, "evmVersion": EVM_VERSION},
                "abi": c["abi"],
                "bytecode": "0x" + c["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
            }
            path = out_dir / f"{name}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(artifact, indent=1) + "\n")
            os.replace(tmp, path)
            written.append(path)
            names.append(name)
    stamp.write_text(json.dumps({"hash": digest, "contracts": names}) + "\n")
    return written


def check(
    contracts_dir: Path = CONTRACTS_DIR, out_dir: Path = ARTIFACTS_DIR, *, root: Path = ROOT
) -> list[str]:
    """How the artifacts in out_dir differ from a fresh build of contracts_dir (empty: none)."""
    with tempfile.TemporaryDirectory(prefix="contracts-check-") as tmp:
        fresh = {
            p.name: p.read_bytes() for p in build(contracts_dir, Path(tmp), force=True, root=root)
        }
    have = {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.json"))}
    problems = [
        f"{name}: missing (a fresh build makes it)" for name in sorted(set(fresh) - set(have))
    ]
    problems += [f"{name}: no contract source builds it" for name in sorted(set(have) - set(fresh))]
    problems += [
        f"{name}: differs from a fresh build of the sources"
        for name in sorted(set(fresh) & set(have))
        if fresh[name] != have[name]
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m agent.chainclient.build", description="compile contracts/*.sol"
    )
    ap.add_argument("--contracts", type=Path, default=CONTRACTS_DIR)
    ap.add_argument("--out", type=Path, default=ARTIFACTS_DIR)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="compile even if up to date")
    mode.add_argument(
        "--check",
        action="store_true",
        help="fail unless the artifacts equal a fresh build of the sources (writes nothing)",
    )
    args = ap.parse_args(argv)
    if args.check:
        try:
            problems = check(args.contracts, args.out)
        except (BuildError, subprocess.SubprocessError, OSError) as exc:
            print(f"contracts check failed: {exc}", file=sys.stderr)
            return 1
        for problem in problems:
            print(f"contracts check: {args.out}/{problem}", file=sys.stderr)
        if problems:
            print(
                "run `python -m agent.chainclient.build` and commit the artifacts with the sources",
                file=sys.stderr,
            )
            return 1
        print(f"contracts: the artifacts in {args.out} equal a fresh build")
        return 0
    try:
        paths = build(args.contracts, args.out, force=args.force)
    except (BuildError, subprocess.SubprocessError, OSError) as exc:
        print(f"contracts build failed: {exc}", file=sys.stderr)
        return 1
    print(f"contracts: {len(paths)} artifact(s) in {args.out}: {', '.join(p.stem for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
