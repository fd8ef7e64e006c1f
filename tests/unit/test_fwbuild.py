"""agent/fwbuild.py: the board's MicroPython read from its answer, the library compiled by the
real mpy-cross for that version (bytecode v6 for 1.22-1.27, v5 for 1.12-1.18), and boards it
cannot serve refused with what to do."""

from __future__ import annotations

import pytest

from agent import fwbuild


def test_the_board_answer_is_parsed_into_its_runtime() -> None:
    rt = fwbuild.parse_board_runtime("micropython 1.27.0 774\r\n")
    assert rt == fwbuild.BoardRuntime("micropython", (1, 27, 0), 774)
    assert rt.mpy_major == 6 and rt.describe() == "micropython 1.27.0 (.mpy v6)"
    with pytest.raises(fwbuild.FirmwareBuildError, match="is it running MicroPython"):
        fwbuild.parse_board_runtime("Traceback (most recent call last):")


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (fwbuild.BoardRuntime("cpython", (3, 11, 7), 0), "not MicroPython: deploy the sources"),
        (fwbuild.BoardRuntime("micropython", (1, 19, 1), 6), "needs 1.22.0 or later"),
    ],
)
def test_boards_the_firmware_cannot_serve_are_refused_with_the_way_out(
    runtime: fwbuild.BoardRuntime, message: str
) -> None:
    with pytest.raises(fwbuild.FirmwareBuildError, match=message):
        fwbuild.compiled_files(fwbuild.CHECKOUT, runtime)


def test_the_library_is_compiled_for_the_boards_version_and_boot_files_stay_sources() -> None:
    files = dict(fwbuild.compiled_files(fwbuild.CHECKOUT, fwbuild.BoardRuntime(
        "micropython", (1, 22, 2), 0x206)))  # fmt: skip
    assert files["boot.py"] == (fwbuild.CHECKOUT / "boot.py").read_bytes()
    assert files["main.py"] == (fwbuild.CHECKOUT / "main.py").read_bytes()
    mpy = {p: c for p, c in files.items() if p.endswith(".mpy")}
    assert "lib/edgence/app.mpy" in mpy and len(mpy) == len(files) - 2
    assert {c[:2] for c in mpy.values()} == {b"M\x06"}
    assert b"lib/edgence/app.py" in mpy["lib/edgence/app.mpy"]  # the name tracebacks show


def test_a_board_whose_bytecode_version_differs_from_the_compilers_output_is_refused() -> None:
    # A board claiming 1.27 but loading .mpy v5 (a custom build): the header check catches it.
    with pytest.raises(fwbuild.FirmwareBuildError, match="the board loads v5"):
        fwbuild.compiled_files(fwbuild.CHECKOUT, fwbuild.BoardRuntime("micropython", (1, 27, 0), 5))


def test_stale_twins_on_the_board_are_listed_for_removal() -> None:
    files = [("lib/edgence/app.mpy", b""), ("boot.py", b""), ("lib/edgence/x.py", b"")]
    assert fwbuild.stale_on_board(files) == ["lib/edgence/app.py", "lib/edgence/x.mpy"]


def test_the_firmware_is_found_in_this_editable_checkout() -> None:
    assert fwbuild.shipped_firmware() == fwbuild.CHECKOUT
