"""The pairing QR code: the device's id, key and counter start as one short text line, drawn
with half-block characters (two module rows per text line) so that it fits a 24-row terminal.

The whole bundle (broker, topic, login, sensors) does not fit a QR code that small: it stays
in the bundle file. The QR text is `edgence1:<device id>:<key, 64 hex>:<counter start>`, which
any phone QR reader shows as text, for firmware that is provisioned by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

QR_PREFIX = "edgence1"
MAX_ROWS = 24  # text lines the QR code may take: a classic terminal's height
# Characters for a (top, bottom) pair of modules, True = dark. Light modules are drawn in the
# terminal's text colour, dark ones are left blank: right for light-on-dark terminals, the usual
# default; the quiet zone around the code is drawn light too.
_BLOCKS = {(False, False): "█", (True, False): "▄", (False, True): "▀", (True, True): " "}


def device_card(bundle: dict[str, Any]) -> str:
    """The QR text for a provisioning bundle: what a device cannot be told over the air."""
    return f"{QR_PREFIX}:{bundle['device_id']}:{bundle['key']}:{bundle['counter_start']}"


def render(matrix: Sequence[Sequence[int]], border: int) -> list[str]:
    """Text lines for a module matrix (1 or True = dark), two module rows per line."""
    size = len(matrix[0]) + 2 * border
    light = [False] * size
    rows = [light] * border
    rows += [[False] * border + [bool(m) for m in row] + [False] * border for row in matrix]
    rows += [light] * border
    if len(rows) % 2:
        rows.append(light)
    return [
        "".join(_BLOCKS[(top, bottom)] for top, bottom in zip(rows[i], rows[i + 1], strict=True))
        for i in range(0, len(rows), 2)
    ]


def qr_lines(text: str) -> list[str]:
    """The smallest QR code for `text`, with the widest quiet zone (4 modules at most, 1 at
    least) that keeps it within MAX_ROWS lines."""
    import segno

    qr = segno.make_qr(text, error="l", boost_error=False)
    matrix = [list(row) for row in qr.matrix]
    for border in (4, 3, 2, 1):
        lines = render(matrix, border)
        if len(lines) <= MAX_ROWS:
            return lines
    return render(matrix, 1)  # a text too long for MAX_ROWS; device_card never is


def print_qr(bundle: dict[str, Any], out: TextIO) -> None:
    for line in qr_lines(device_card(bundle)):
        print(line, file=out)
    print(
        f"QR: {QR_PREFIX}:ID:KEY:COUNTER_START (device id, key in hex, counter start) for a "
        "phone's QR reader, to provision firmware by hand; the full bundle is the file above",
        file=out,
    )
