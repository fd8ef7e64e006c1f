"""A fleet: seven agents as processes (`edgence-agent run`), one anvil, one Mosquitto (the
devices' broker and the upstream one), simulated devices. Masternodes registered with
collateral, rounds in vrf mode, the oracle reserved for the elected committee. Asserted on
chain, epoch by epoch and feed by feed: the committee posted for each epoch is the one the agents
decided, posted before its epoch; each feed of each epoch is reported by the epoch's leader; the
leader SIGKILLed mid-epoch, after its duty began (its report taken from the node's pool: the
fault injected, see below), and the next elected node reporting each feed in its own turn,
before the fallback; a masternode that withdrew is never elected afterwards.

CPU per epoch of each agent process is sampled from /proc and, with EDGENCE_FLEET_CPU set to a
file, written there for bench/election_fleet.py (recorded, not asserted)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from eth_abi.abi import decode as abi_decode
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.feeds import default_feed
from agent.attest.keys import GatewayKey, write_key_file
from agent.attest.vrfkey import vrf_secret
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import hex_int
from agent.chainclient.tx import encode_call, event_topic
from agent.election.duty import Epoch, epoch_at
from agent.election.schedule import RoundSchedule
from agent.localbroker import LocalMosquitto
from agent.simulator import SimulatedDevice
from bench.agentproc import cpu_seconds, spawn_agent, wait_ready
from tests.integration.conftest import agent_config_dict, to_toml, wait_until
from tests.integration.election.conftest import (
    Miner,
    deploy,
    deploy_board,
    deploy_registry,
    fund,
    head,
    receipt,
    register_raw,
    registry_tx,
    send_raw,
)

pytestmark = pytest.mark.slow

AGENTS = 7
LENGTH, WINDOW, CONFIRMATIONS, SEATS = 10, 5, 2, 3
LEAD, FALLBACK = 3, 8
DEVICES = ("dev-1", "dev-2")


class Fleet:
    def __init__(self, tmp: Path, node: LocalAnvil, broker: LocalMosquitto) -> None:
        self.tmp, self.node, self.broker = tmp, node, broker
        self.keys = [GatewayKey.generate() for _ in range(AGENTS)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cfg: dict[str, Any] = {}

    def configure(self, board: str, oracle: str) -> None:
        self.cfg = agent_config_dict(
            self.broker,
            self.broker,
            gateway={"verifying_contract": oracle, "chain_id": self.node.chain_id},
            chain={"enabled": True, "rpc_url": self.node.url, "poll_interval": 0.2},
            election={
                "enabled": True,
                "mode": "vrf",
                "board": board,
                "k": SEATS,
                "round_length": LENGTH,
                "cutoff": WINDOW,
                "confirmations": CONFIRMATIONS,
                "aggregate": True,
            },
        )
        self.cfg["sources"]["mqtt"]["allowed_devices"] = list(DEVICES)

    def start(self, i: int) -> None:
        d = self.tmp / f"gw{i}"
        d.mkdir(exist_ok=True)
        if not (d / "gateway.key").exists():
            write_key_file(d / "gateway.key", self.keys[i])
        (d / "agent.toml").write_text(to_toml(self.cfg))
        log = d / f"agent-{time.monotonic_ns()}.log"
        proc = spawn_agent(d / "agent.toml", log)
        wait_ready(proc, log, 60)
        self.procs[self.keys[i].address] = proc

    def kill(self, address: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(address)
        proc.send_signal(sig)
        proc.wait(20)

    def results(self, round: int) -> tuple[str, ...]:
        """The elected of `round` as an agent published it (retained, upstream)."""
        got: list[bytes] = []

        def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
            got.append(bytes(msg.payload))

        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.on_message = on_message
        client.connect("127.0.0.1", self.broker.port)
        client.subscribe(f"edgence/election/{round}", 1)
        client.loop_start()
        try:
            wait_until(lambda: bool(got), 30, f"the result of round {round}")
        finally:
            client.loop_stop()
            client.disconnect()
        return tuple(json.loads(got[0])["elected"])

    def stop_all(self) -> None:
        for address in list(self.procs):
            self.kill(address, signal.SIGTERM)


@pytest.fixture
def fleet(
    tmp_path: Path, chain: tuple[LocalAnvil, Miner], upstream_broker: LocalMosquitto
) -> Iterator[Fleet]:
    node, _miner = chain
    f = Fleet(tmp_path, node, upstream_broker)
    try:
        yield f
    finally:
        f.stop_all()


def devices_publishing(broker: LocalMosquitto, stop: threading.Event) -> threading.Thread:
    """Simulated devices: a frame of each every 0.5 s on the devices' broker."""

    def run() -> None:
        devs = [SimulatedDevice(d, [("temp", 2100, -2, "Cel")]) for d in DEVICES]
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        while not stop.wait(0.5):
            for d in devs:
                client.publish(f"devices/{d.device_id}/up", d.next_frame(), qos=1)
        client.loop_stop()
        client.disconnect()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def logs(node: LocalAnvil, address: str, topic: str, lo: int = 0) -> list[dict[str, Any]]:
    out = node.rpc("eth_getLogs", [{"address": address, "fromBlock": hex(lo), "topics": [topic]}])
    assert isinstance(out, list)
    return out


class CpuSampler:
    """At each epoch's first block, each running agent's CPU seconds so far (/proc/<pid>/stat)."""

    def __init__(self, fleet: Fleet, node: LocalAnvil, sched: RoundSchedule) -> None:
        self.fleet, self.node, self.sched = fleet, node, sched
        self.samples: dict[int, dict[int, float]] = {}  # epoch -> pid -> cpu seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            ep = epoch_at(self.sched, head(self.node))
            if ep is None or ep.round in self.samples:
                continue
            got = {}
            for proc in list(self.fleet.procs.values()):
                with contextlib.suppress(OSError):
                    got[proc.pid] = cpu_seconds(proc.pid)
            self.samples[ep.round] = got

    def per_epoch(self) -> list[float]:
        """CPU seconds per agent per epoch, over consecutive epochs where the same agents ran."""
        out = []
        eps = sorted(self.samples)
        for a, b in itertools.pairwise(eps):
            if b != a + 1:
                continue
            for pid, t in self.samples[b].items():
                if pid in self.samples[a]:
                    out.append(t - self.samples[a][pid])
        return out


def accepted_reports(
    node: LocalAnvil, oracle: str, sched: RoundSchedule
) -> dict[int, dict[bytes, list[tuple[int, str]]]]:
    """epoch -> feed -> [(offset in the epoch, reporter)] of every ObservationAccepted."""
    topic = event_topic(load_artifact("ObservationOracle").event("ObservationAccepted"))
    out: dict[int, dict[bytes, list[tuple[int, str]]]] = {}
    for lg in logs(node, oracle, topic):
        block = hex_int(lg["blockNumber"])
        ep = epoch_at(sched, block)
        assert ep is not None
        txr = node.rpc("eth_getTransactionReceipt", [lg["transactionHash"]])
        assert isinstance(txr, dict)
        feed = bytes.fromhex(lg["topics"][2][2:])
        out.setdefault(ep.round, {}).setdefault(feed, []).append(
            (block - ep.first, str(txr["from"]).lower())
        )
    return out


def pool_from(node: LocalAnvil, address: str) -> list[dict[str, Any]]:
    """The transactions from `address` waiting in the node's pool."""
    content = node.rpc("txpool_content")
    assert isinstance(content, dict)
    for sender, txs in content["pending"].items():
        if sender.lower() == address.lower():
            return list(txs.values())
    return []


@pytest.mark.timeout(300)
def test_a_fleet_of_seven_elects_reports_survives_a_leader_killed_mid_epoch_and_drops_a_leaver(
    fleet: Fleet, chain: tuple[LocalAnvil, Miner], contracts_built: Path
) -> None:
    node, miner = chain
    miner.gap = 0.3
    dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    registry = deploy_registry(node)
    start = head(node) + 30
    board = deploy_board(node, "vrf", start, LENGTH, WINDOW, registry, LEAD, FALLBACK)
    oracle = deploy(node, "ObservationOracle", registry, 60)
    art = load_artifact("ObservationOracle")
    gate = encode_call(art.function("setAggregators"), board)
    assert receipt(node, send_raw(node, dev, oracle, gate))["status"] == "0x1"
    feeds = {default_feed(d, "temp") for d in DEVICES}
    for feed in feeds:
        create = encode_call(art.function("createFeed"), feed, 1, 0, False, 600, 600, [])
        assert receipt(node, send_raw(node, dev, oracle, create))["status"] == "0x1"
    for k in fleet.keys:
        fund(node, k)
        assert receipt(node, register_raw(node, board, k, vrf_secret(k)))["status"] == "0x1"
    sched = RoundSchedule(start, LENGTH, WINDOW, CONFIRMATIONS)
    submitters = {k.address for k in fleet.keys}  # running masternodes: they submit each round
    miner.expect = lambda h: (
        len(submitters)
        if (r := sched.round_at(h)) is not None and h == sched.boundary(r) + CONFIRMATIONS - 1
        else 0
    )
    fleet.configure(board, oracle)
    for i in range(AGENTS):
        fleet.start(i)
    stop = threading.Event()
    devices_publishing(fleet.broker, stop)
    # Epochs asserted: those that begin once every agent has had both devices' readings for a
    # whole epoch (before that a leader may hold one feed only, and report that).
    settled = head(node) + LENGTH
    cpu = CpuSampler(fleet, node, sched)
    board_art = load_artifact("ElectionBoard")
    posted_t = event_topic(board_art.event("CommitteePosted"))
    withdrawn_t = event_topic(load_artifact("MasternodeRegistry").event("Withdrawn"))

    def committees() -> dict[int, tuple[tuple[str, ...], int]]:
        """round -> (its committee as first posted, the block it was posted in)"""
        out = {}
        for lg in logs(node, board, posted_t):
            (elected,) = abi_decode(["address[]"], bytes.fromhex(lg["data"][2:]))
            r = int(lg["topics"][1], 16)
            out[r] = (tuple(a.lower() for a in elected), hex_int(lg["blockNumber"]))
        return out

    def sent_report(who: str, since: int) -> bool:
        """`who` has a report to the oracle in the pool, or mined from block `since` on."""
        if any(str(tx["to"]).lower() == oracle.lower() for tx in pool_from(node, who)):
            return True
        found = logs(node, oracle, event_topic(art.event("ObservationAccepted")), since)
        for txh in {lg["transactionHash"] for lg in found}:
            tx = node.rpc("eth_getTransactionByHash", [txh])
            if isinstance(tx, dict) and str(tx["from"]).lower() == who.lower():
                return True
        return False

    def leader_sent(h: int) -> bool:
        """At each epoch's offset LEAD - 2 the chain waits until its (living) leader's report
        is sent (mined by offset LEAD - 1), as it waits for the round's submissions: a leader
        slowed by a busy machine, not the board's rule, is what a 0.3 s block would otherwise
        test."""
        ep = epoch_at(sched, h)
        if ep is None or h != ep.first + LEAD - 2:
            return True
        posted = committees().get(ep.round)
        if posted is None or posted[0][0] not in {a.lower() for a in fleet.procs}:
            return True
        return sent_report(posted[0][0], ep.first)

    miner.waits_for = leader_sent
    try:
        # Epochs with every node up: each committee posted, each epoch's feeds by its leader.
        wait_until(lambda: len(committees()) >= 3, 120, "three committees posted")
        # The leader of a coming epoch, SIGKILLed in it: the chain stops at the epoch's first
        # block, where the leader's duty begins; once its report is in the node's pool it is
        # killed and its pending transactions are dropped from the pool (the fault injected: a
        # leader that dies after its duty began but before its report reached the node; a real
        # SIGKILL cannot be timed into that gap reliably).
        victim_epoch = (epoch_at(sched, head(node)) or Epoch(0, 0, 0)).round + 2
        ve = Epoch(victim_epoch, sched.boundary(victim_epoch + 1) + 1, 0)
        miner.hold_at = ve.first
        wait_until(lambda: head(node) >= ve.first and miner.held(), 60, "the victim epoch")
        assert head(node) == ve.first
        committee = fleet.results(victim_epoch)
        victim, standby = committee[0], committee[1]
        wait_until(
            lambda: any(str(tx["to"]).lower() == oracle.lower() for tx in pool_from(node, victim)),
            60,
            "the leader's report in the pool",
        )
        fleet.kill(victim)
        submitters.discard(victim)
        for tx in pool_from(node, victim):
            node.rpc("anvil_dropTransaction", [tx["hash"]])
        assert pool_from(node, victim) == []
        # The standby's turn starts at offset LEAD: the chain waits at that head until its
        # report is in the pool (as at each round's submissions: a slow agent on a busy
        # machine, not the board's rule, is what a 0.3 s block would otherwise test).
        turn = ve.first + LEAD

        def standby_sent(h: int) -> bool:
            return h != turn or sent_report(standby, ve.first)

        miner.waits_for = lambda h: standby_sent(h) and leader_sent(h)
        # Meanwhile a masternode outside that committee withdraws, for good, its agent running
        # on (mined in the epoch's next block: before the next round's cutoff, so its proof
        # for that round, sent at this head, does not count).
        leaver_i = next(i for i, k in enumerate(fleet.keys) if k.address not in committee)
        leaver = fleet.keys[leaver_i].address
        submitters.discard(leaver)
        wait_until(  # its own transaction first: the withdrawal takes the next nonce
            lambda: any(str(tx["to"]).lower() == board.lower() for tx in pool_from(node, leaver)),
            60,
            "the leaver's proof in the pool",
        )
        withdraw = registry_tx(node, registry, fleet.keys[leaver_i], "withdraw")
        miner.resume()
        rc = receipt(node, withdraw)
        assert rc["status"] == "0x1"
        withdrawn_at = hex_int(rc["blockNumber"])
        wait_until(lambda: max(committees()) >= victim_epoch + 4, 150, "four more committees")
        # The last epoch asserted below must be over.
        last = max(committees()) - 1
        wait_until(lambda: head(node) > sched.boundary(last + 2) + 2, 60, "its epoch over")
    finally:
        stop.set()
        cpu.stop.set()

    cs = committees()
    reports = accepted_reports(node, oracle, sched)
    assert len(logs(node, registry, withdrawn_t)) == 1
    # (the first rounds may have fewer candidates: agents still starting)
    full = [
        e
        for e, (c, _) in cs.items()
        if len(c) == SEATS and e <= last and sched.boundary(e + 1) + 1 > settled
    ]
    assert len(full) >= 5, cs
    assert victim_epoch in full
    for e in full:
        c, posted_at = cs[e]
        ep = Epoch(e, sched.boundary(e + 1) + 1, sched.boundary(e + 2))
        # Posted before its epoch began: a dead leader does not hold the committee up.
        assert posted_at < ep.first, (e, posted_at, ep)
        got = reports.get(e, {})
        assert set(got) == feeds, f"epoch {e}: feeds reported {sorted(f.hex() for f in got)}"
        for feed, rs in got.items():
            early = sorted(rs)[0]
            if e == victim_epoch:
                # The leader died in it: each feed reported by the next elected node in its
                # turn, from LEAD on and before the fallback, and by nobody else (the nodes
                # after it find its report and send nothing).
                assert all(s == standby and LEAD <= o < FALLBACK for o, s in rs), (e, c, rs)
            else:
                # Reported by the epoch's leader before the standby's turn, and by nobody else.
                assert all(s == c[0] for _, s in rs), (e, feed.hex(), c, rs)
                assert early[0] < LEAD, (e, feed.hex(), c, rs)
        if sched.cutoff(e) > withdrawn_at:
            assert leaver not in c, f"epoch {e}: the withdrawn masternode elected"
    assert any(sched.cutoff(e) > withdrawn_at for e in full)
    assert all(victim not in c for e, (c, _) in cs.items() if e > victim_epoch)
    out = os.environ.get("EDGENCE_FLEET_CPU")
    if out:
        per_agent = cpu.per_epoch()
        Path(out).write_text(
            json.dumps(
                {
                    "agents": AGENTS,
                    "epoch_blocks": LENGTH,
                    "block_gap_s": miner.gap,
                    "devices": len(DEVICES),
                    "samples": per_agent,
                    "epochs": len(cpu.samples),
                }
            )
        )
