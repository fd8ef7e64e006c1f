"""The oracle's queries: JSON (MQTT) and CoAP path/query parsing, and what is refused."""

from __future__ import annotations

import pytest

from agent.oracle.query import OracleQuery, QueryError


def test_json_queries() -> None:
    assert OracleQuery.from_json(b'{"device":"dev-1","sensor":"temp"}') == OracleQuery(
        "dev-1", "temp"
    )
    q = OracleQuery.from_json(b'{"device":"dev-1","sensor":"temp","sequence":7}')
    assert q.sequence == 7 and q.at is None
    bad = [
        b"[1]",
        b"{",
        b'{"device":"dev-1"}',
        b'{"device":"dev/1","sensor":"temp"}',
        b'{"device":"dev-1","sensor":"temp","sequence":true}',
        b'{"device":"dev-1","sensor":"temp","sequence":1.5}',
        b'{"device":"dev-1","sensor":"temp","at":-3}',
        b'{"device":"dev-1","sensor":"temp","extra":1}',
        b'{"device":"dev-1","sensor":"' + b"x" * 5000 + b'"}',
    ]
    for payload in bad:
        with pytest.raises(QueryError) as info:
            OracleQuery.from_json(payload)
        assert info.value.code == "malformed" and info.value.status == 400


def test_coap_queries() -> None:
    assert OracleQuery.from_coap(["dev-1", "temp"], ["at=1767225600"]).at == 1767225600
    assert OracleQuery.from_coap(["dev-1", "temp"], ["seq=3"]).sequence == 3
    for path, query in (
        (["dev-1"], []),
        (["dev-1", "temp", "x"], []),
        (["dev-1", "temp"], ["seq=-1"]),
        (["dev-1", "temp"], ["seq=1", "seq=2"]),
        (["dev-1", "temp"], ["seq=1", "at=2"]),
        (["dev-1", "temp"], ["limit=3"]),
    ):
        with pytest.raises(QueryError):
            OracleQuery.from_coap(path, query)
