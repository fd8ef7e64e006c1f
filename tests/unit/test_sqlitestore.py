"""The small sqlite stores (transactions, election rounds) own their thread like the journal: their
statements and commits run there, never on the event loop. Real sqlite files under tmp_path."""

from __future__ import annotations

import ast
import asyncio
import sqlite3
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.attest.keys import GatewayKey
from agent.chainclient.tx import Eip1559Tx
from agent.chainclient.txstore import TxStore
from agent.election.store import ElectionStore
from agent.errors import ChainError, ElectionError
from agent.sqlitestore import Sql
from tests.unit.election.test_status import BOARD, result

ROOT = Path(__file__).resolve().parents[2]


def trace_threads(threads: set[str]) -> Callable[[Sql], None]:
    """White-box: a statement for the store's own thread that records which thread runs every
    later statement of its connection."""

    def install(db: Sql) -> None:
        db.set_trace_callback(lambda _sql: threads.add(threading.current_thread().name))

    return install


async def test_election_store_commits_in_its_own_thread(tmp_path: Path) -> None:
    threads: set[str] = set()
    async with ElectionStore(tmp_path / "election.sqlite") as store:
        await store.open(BOARD, "paper")
        await store._run(trace_threads(threads))
        await store.save(result(3))
        await store.mark_published(3)
        assert await store.next_round() == 4
        assert [r.round for r in await store.unpublished()] == []
        assert [(r.round, published) for r, published in await store.latest(5)] == [(3, True)]
    assert threads and threading.current_thread().name not in threads
    assert all(name.startswith("election-store") for name in threads)


async def test_tx_store_commits_in_its_own_thread(tmp_path: Path) -> None:
    key = GatewayKey.generate()
    signed = Eip1559Tx(31337, 0, 10**9, 10 * 10**9, 21_000, key.address, 1).sign(key)
    threads: set[str] = set()
    async with TxStore(tmp_path / "chain.sqlite") as store:
        await store._run(trace_threads(threads))
        tx_id = await store.insert(signed, 1.0)
        await store.set_mined(tx_id, 7, "0x" + "11" * 32, signed.hash_hex)
        own = await store.get(tx_id, 31337)
        assert (own.status, own.block_number, own.hashes) == ("mined", 7, [signed.hash_hex])
        assert await store.max_nonce() == 0
        assert await store.find_by_data(key.address, b"") == [tx_id]
        assert await store.unfinished(31337) == []
    assert threads and threading.current_thread().name not in threads
    assert all(name.startswith("transaction-store") for name in threads)


async def test_the_connection_refuses_the_event_loop_thread(tmp_path: Path) -> None:
    async with TxStore(tmp_path / "chain.sqlite") as store:
        conn = store._store_conn  # white-box: reach past the thread rule on purpose
        assert conn is not None
        with pytest.raises(sqlite3.ProgrammingError, match="thread"):
            conn.execute("SELECT count(*) FROM txs")
        assert await store.max_nonce() is None


async def test_a_closed_store_refuses_calls_and_its_thread_has_ended(tmp_path: Path) -> None:
    store = ElectionStore(tmp_path / "election.sqlite")
    with pytest.raises(ElectionError, match="not open"):
        await store.next_round()
    await store.close()  # never opened: nothing to do
    seen: list[threading.Thread] = []
    async with store:
        await store._run(lambda db: seen.append(threading.current_thread()))
        await store.set_next_round(2)
    await store.close()  # twice: safe
    assert not store.is_open
    assert seen and not seen[0].is_alive()
    with pytest.raises(ElectionError, match="not open"):
        await store.next_round()
    async with store:  # reopened: a new thread, the same file
        assert await store.next_round() == 2


async def test_calls_racing_the_opening_share_it(tmp_path: Path) -> None:
    store = TxStore(tmp_path / "chain.sqlite")
    try:
        await asyncio.gather(store.open(), store.open(), store.max_nonce())
        assert await store.max_nonce() is None
    finally:
        await store.close()
    with pytest.raises(ChainError, match="not open"):
        await store.max_nonce()


# Attributes that reach a store's connection or thread without going through `_run` (the thread
# and `_call` are the shared ThreadOwner's, agent/threadowner.py, which the journal also uses).
STORE_PRIVATE = {"_store_conn", "_store_apply", "_worker", "_call"}
THREAD_OWNERS = ("agent/sqlitestore.py", "agent/threadowner.py", "agent/journal/")


def store_rule_breaches(rel: str, source: str) -> list[str]:
    if rel.startswith(THREAD_OWNERS):
        return []
    return [
        f"{rel}:{node.lineno} uses {node.attr}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr in STORE_PRIVATE
    ]


def test_no_module_but_the_store_base_touches_a_stores_connection_or_thread() -> None:
    breaches: list[str] = []
    for file in sorted((ROOT / "agent").rglob("*.py")):
        rel = file.relative_to(ROOT).as_posix()
        breaches += store_rule_breaches(rel, file.read_text(encoding="utf-8"))
    assert breaches == []
    rogue = "def peek(store):\n    return store._store_conn.execute('SELECT 1')\n"
    assert store_rule_breaches("agent/chainclient/sender.py", textwrap.dedent(rogue)) != []
