"""NMEA 0183 GPS sentences (GGA, RMC) into exact position readings.

Pure: no I/O. The checksum (XOR of the bytes between '$' and '*') is always verified. Latitude
and longitude are degrees rounded half-even to 7 decimals (about 1 cm): ddmm.mmmm minutes do not
convert to degrees exactly in decimal. Altitude, fix quality and satellites are exact.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from agent.errors import FrameError
from agent.frame import SensorValue

COORD_EXPONENT = -7
_Q = Decimal(1).scaleb(COORD_EXPONENT)
_SENTENCE = re.compile(rb"\$([A-Z]{2})([A-Z]{3}),([ -~]*)\*([0-9A-Fa-f]{2})\Z")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")
_TIME = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})(?:\.[0-9]+)?\Z")
_COORD = {n: re.compile(rf"[0-9]{{{n}}}[0-9]{{2}}(?:\.[0-9]+)?\Z") for n in (2, 3)}
_DATE = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})\Z")


@dataclass(frozen=True, slots=True)
class Position:
    """What one GGA or RMC sentence says. Fields the sentence lacks are None."""

    kind: str  # "GGA" or "RMC"
    time_of_day: int | None  # seconds since 00:00 UTC
    date: tuple[int, int, int] | None  # (year, month, day), RMC only
    latitude: int | None  # degrees * 10^7
    longitude: int | None
    altitude: tuple[int, int] | None  # (value, exponent) metres above mean sea level, GGA only
    fix_quality: int | None  # GGA: 0 invalid, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 DR...
    satellites: int | None  # GGA: satellites in use
    valid: bool  # GGA: fix_quality > 0; RMC: status A

    def values(self) -> tuple[SensorValue, ...]:
        """The readings this sentence yields (a position only when there is a fix)."""
        out = []
        if self.valid and self.latitude is not None and self.longitude is not None:
            out.append(SensorValue("latitude", self.latitude, COORD_EXPONENT, "deg"))
            out.append(SensorValue("longitude", self.longitude, COORD_EXPONENT, "deg"))
            if self.altitude is not None:
                out.append(SensorValue("altitude", self.altitude[0], self.altitude[1], "m"))
        if self.fix_quality is not None:
            out.append(SensorValue("fix_quality", self.fix_quality, 0, "1"))
        if self.satellites is not None:
            out.append(SensorValue("satellites", self.satellites, 0, "1"))
        return tuple(out)

    def timestamp(self, date: tuple[int, int, int] | None) -> int | None:
        """Unix seconds of the fix, given the latest date seen (GGA carries no date)."""
        day = self.date or date
        if self.time_of_day is None or day is None:
            return None
        return calendar.timegm((*day, 0, 0, 0, 0, 0, 0)) + self.time_of_day


def nmea_checksum(body: bytes) -> int:
    c = 0
    for b in body:
        c ^= b
    return c


def encode_nmea(body: str) -> bytes:
    """'$' + body + '*hh' + CR LF (tests and the simulator)."""
    raw = body.encode("ascii")
    return b"$%s*%02X\r\n" % (raw, nmea_checksum(raw))


def parse_nmea(line: bytes) -> Position | None:
    """A GGA or RMC sentence as a Position; None for other (valid) sentences.

    Leading garbage before the last '$' is skipped. Raises FrameError: bad_checksum, bad_nmea.
    """
    start = line.rfind(b"$")
    m = _SENTENCE.match(line, max(start, 0))
    if start < 0 or m is None:
        raise FrameError("bad_nmea", "not an NMEA 0183 sentence ($ttSSS,...*hh)")
    body = line[start + 1 : m.start(4) - 1]
    if nmea_checksum(body) != int(m.group(4), 16):
        raise FrameError("bad_checksum", f"NMEA checksum {m.group(4).decode()} does not match")
    kind = m.group(2).decode()
    fields = m.group(3).decode("ascii").split(",")
    if kind == "GGA":
        return _gga(fields)
    if kind == "RMC":
        return _rmc(fields)
    return None


def _field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def _time(text: str) -> int | None:
    if not text:
        return None
    m = _TIME.match(text)
    if m is None:
        raise FrameError("bad_nmea", f"time {text[:12]!r} is not hhmmss")
    h, mi, s = (int(g) for g in m.groups())
    if h > 23 or mi > 59 or s > 60:
        raise FrameError("bad_nmea", f"time {text[:12]!r} is out of range")
    return h * 3600 + mi * 60 + s


def _coordinate(text: str, hemi: str, deg_digits: int, limit: int, hemis: str) -> int | None:
    if not text and not hemi:
        return None
    if hemi not in hemis or not _COORD[deg_digits].match(text):
        raise FrameError("bad_nmea", f"coordinate {text[:16]!r},{hemi[:2]!r} is malformed")
    degrees = int(text[:deg_digits])
    minutes = Decimal(text[deg_digits:])
    if minutes >= 60:
        raise FrameError("bad_nmea", f"coordinate {text[:16]!r} has {minutes} minutes")
    value = (degrees + minutes / 60).quantize(_Q, rounding=ROUND_HALF_EVEN)
    if value > limit:
        raise FrameError("bad_nmea", f"coordinate {text[:16]!r} is beyond {limit} degrees")
    scaled = int(value.scaleb(-COORD_EXPONENT))
    return -scaled if hemi == hemis[1] else scaled


def _decimal(text: str, what: str) -> tuple[int, int]:
    if not _DECIMAL.match(text) or len(text) > 20:
        raise FrameError("bad_nmea", f"{what} {text[:20]!r} is not a decimal number")
    sign, digits, exp = Decimal(text).as_tuple()
    assert isinstance(exp, int)
    return int("".join(map(str, digits))) * (-1 if sign else 1), exp


def _small_int(text: str, what: str, hi: int) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not text.isascii() or int(text) > hi:
        raise FrameError("bad_nmea", f"{what} {text[:8]!r} is not an integer 0-{hi}")
    return int(text)


def _gga(f: list[str]) -> Position:
    # $GPGGA,time,lat,N,lon,E,quality,sats,hdop,alt,M,geoid,M,age,station
    quality = _small_int(_field(f, 5), "fix quality", 9)
    alt_text, alt_unit = _field(f, 8), _field(f, 9)
    altitude = None
    if alt_text:
        if alt_unit != "M":
            raise FrameError("bad_nmea", f"altitude unit {alt_unit[:4]!r} is not M")
        altitude = _decimal(alt_text, "altitude")
    return Position(
        kind="GGA",
        time_of_day=_time(_field(f, 0)),
        date=None,
        latitude=_coordinate(_field(f, 1), _field(f, 2), 2, 90, "NS"),
        longitude=_coordinate(_field(f, 3), _field(f, 4), 3, 180, "EW"),
        altitude=altitude,
        fix_quality=quality,
        satellites=_small_int(_field(f, 6), "satellites", 99),
        valid=bool(quality),
    )


def _rmc(f: list[str]) -> Position:
    # $GPRMC,time,status,lat,N,lon,E,speed,course,date,magvar,E[,mode]
    status = _field(f, 1)
    if status not in ("A", "V"):
        raise FrameError("bad_nmea", f"RMC status {status[:4]!r} is not A or V")
    date_text = _field(f, 8)
    date = None
    if date_text:
        m = _DATE.match(date_text)
        if m is None:
            raise FrameError("bad_nmea", f"date {date_text[:8]!r} is not ddmmyy")
        d, mo, y = (int(g) for g in m.groups())
        if not (1 <= d <= 31 and 1 <= mo <= 12):
            raise FrameError("bad_nmea", f"date {date_text!r} is out of range")
        date = ((2000 if y < 80 else 1900) + y, mo, d)  # two-digit years, pivot 1980 (GPS epoch)
    return Position(
        kind="RMC",
        time_of_day=_time(_field(f, 0)),
        date=date,
        latitude=_coordinate(_field(f, 2), _field(f, 3), 2, 90, "NS"),
        longitude=_coordinate(_field(f, 4), _field(f, 5), 3, 180, "EW"),
        altitude=None,
        fix_quality=None,
        satellites=None,
        valid=status == "A",
    )
