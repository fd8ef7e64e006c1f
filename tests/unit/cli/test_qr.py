"""The pairing QR code fits a 24-row terminal for any device id and counter, and its
half-block text is exactly the QR matrix (each text line two module rows)."""

from __future__ import annotations

import segno

from agent.cli.qr import MAX_ROWS, device_card, qr_lines

KEY = "a5" * 32
BLOCKS = {"█": (0, 0), "▀": (0, 1), "▄": (1, 0), " ": (1, 1)}  # (top, bottom), 1 = dark


def modules(lines: list[str]) -> list[list[int]]:
    """The module rows the half-block text draws (the inverse of the renderer)."""
    out: list[list[int]] = []
    for line in lines:
        out.append([BLOCKS[c][0] for c in line])
        out.append([BLOCKS[c][1] for c in line])
    return out


def test_the_longest_device_card_fits_24_rows() -> None:
    card = device_card({"device_id": "d" * 32, "key": KEY, "counter_start": 2**64 - 1})
    lines = qr_lines(card)
    assert len(lines) <= MAX_ROWS == 24
    assert len({len(line) for line in lines}) == 1


def test_a_typical_card_keeps_a_wider_quiet_zone_and_still_fits() -> None:
    lines = qr_lines(device_card({"device_id": "greenhouse-1", "key": KEY, "counter_start": 0}))
    assert len(lines) <= 24
    assert lines[0] == "█" * len(lines[0])  # the quiet zone is drawn light


def test_the_text_is_the_qr_matrix_of_the_card_with_its_quiet_zone() -> None:
    card = device_card({"device_id": "dev-1", "key": KEY, "counter_start": 7})
    assert card == f"edgence1:dev-1:{KEY}:7"
    lines = qr_lines(card)
    drawn = modules(lines)
    matrix = [list(row) for row in segno.make_qr(card, error="l", boost_error=False).matrix]
    border = (len(lines[0]) - len(matrix)) // 2
    assert border >= 1
    inner = [row[border : border + len(matrix)] for row in drawn[border : border + len(matrix)]]
    assert inner == matrix
    assert all(m == 0 for row in drawn[:border] for m in row)  # light above the code
