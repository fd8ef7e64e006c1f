"""NMEA 0183 GGA and RMC: checksum verified, coordinates to 1e-7 degree, hemispheres, fixes
without position, and malformed sentences refused with a reason."""

from __future__ import annotations

import pytest

from agent.devices.codecs.nmea import encode_nmea, parse_nmea
from agent.errors import FrameError
from agent.frame import SensorValue


def line(body: str) -> bytes:
    return encode_nmea(body).rstrip(b"\r\n")


def test_gga_from_the_nmea_reference_example_checksum_47() -> None:
    p = parse_nmea(b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47")
    assert p is not None and p.kind == "GGA"
    assert p.values() == (
        SensorValue("latitude", 481173000, -7, "deg"),
        SensorValue("longitude", 115166667, -7, "deg"),
        SensorValue("altitude", 5454, -1, "m"),
        SensorValue("fix_quality", 1, 0, "1"),
        SensorValue("satellites", 8, 0, "1"),
    )
    assert p.timestamp(None) is None  # GGA has no date
    assert p.timestamp((2026, 11, 25)) == 1795610119


def test_rmc_carries_the_date_and_southern_western_hemispheres_are_negative() -> None:
    p = parse_nmea(line("GNRMC,000001.00,A,3351.8000,S,15112.6000,W,0.0,0.0,010100,,,A"))
    assert p is not None and p.kind == "RMC" and p.date == (2000, 1, 1)
    assert p.latitude == -338633333 and p.longitude == -1512100000
    assert p.timestamp(None) == 946684801


def test_a_gga_without_a_fix_yields_only_quality_and_satellites() -> None:
    p = parse_nmea(line("GPGGA,120000,,,,,0,00,,,M,,M,,"))
    assert p is not None and not p.valid
    assert [v.sensor for v in p.values()] == ["fix_quality", "satellites"]


def test_other_sentences_are_valid_but_unused() -> None:
    assert parse_nmea(line("GPGSV,1,1,00")) is None


def test_garbage_before_the_dollar_is_skipped() -> None:
    assert parse_nmea(b"\x00\x13noise" + line("GPGGA,120000,,,,,0,00,,,M,,M,,")) is not None


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48", "bad_checksum"),
        (b"GPGGA,123519*47", "bad_nmea"),
        (line("GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad_nmea"),
        (line("GPGGA,123519,4867.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad_nmea"),
        (line("GPGGA,123519,9107.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad_nmea"),
        (line("GPGGA,253519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad_nmea"),
        (line("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,5e4,M,46.9,M,,"), "bad_nmea"),
        (line("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,F,46.9,M,,"), "bad_nmea"),
        (line("GPRMC,123519,X,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), "bad_nmea"),
        (line("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,321394,003.1,W"), "bad_nmea"),
        (b"$GPGGA,\xff*00", "bad_nmea"),
    ],
)
def test_malformed_sentences_are_refused_with_a_reason(sentence: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as err:
        parse_nmea(sentence)
    assert err.value.reason == reason
