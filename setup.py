"""Build hook: the MicroPython firmware (firmware/micropython: boot.py, main.py, manifest.py,
lib/) ships inside the package as agent/resources/firmware, so `edgence-agent firmware deploy`
finds it in every non-editable install. Everything else is declared in pyproject.toml."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FIRMWARE = Path(__file__).resolve().parent / "firmware" / "micropython"


def firmware_files() -> list[Path]:
    top = [FIRMWARE / n for n in ("boot.py", "main.py", "manifest.py", "README.md")]
    lib = [p for p in (FIRMWARE / "lib").rglob("*.py") if "__pycache__" not in p.parts]
    return [p for p in top if p.is_file()] + sorted(lib)


class BuildPyWithFirmware(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's firmware/micropython
        dest = Path(self.build_lib) / "agent" / "resources" / "firmware"
        for src in firmware_files():
            target = dest / src.relative_to(FIRMWARE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)


setup(cmdclass={"build_py": BuildPyWithFirmware})
