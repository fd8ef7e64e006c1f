"""A fleet: seven agents as processes (`edgence-agent run`), one anvil, one Mosquitto (the
devices' broker and the upstream one), simulated devices. Masternodes registered with
collateral, rounds in vrf mode, the oracle reserved for the elected committee. Asserted on
chain, epoch by epoch: the committee posted for each epoch is the one the agents decided, and
the reports of each epoch come from its leader; the leader of an epoch SIGKILLed in it, and the
next elected node reports; a masternode that withdrew is never elected afterwards."""

from __future__ import annotations

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
from agent.election.duty import epoch_at
from agent.election.schedule import RoundSchedule
from agent.localbroker import LocalMosquitto
from agent.simulator import SimulatedDevice
from bench.agentproc import spawn_agent, wait_ready
from tests.integration.conftest import agent_config_dict, to_toml, wait_until
from tests.integration.election.conftest import (
    Miner,
    call,
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
        import json

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


@pytest.mark.timeout(240)
def test_a_fleet_of_seven_elects_reports_survives_a_killed_leader_and_drops_a_leaver(
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
    for d in DEVICES:
        feed = default_feed(d, "temp")
        create = encode_call(art.function("createFeed"), feed, 1, 0, False, 600, 600, [])
        assert receipt(node, send_raw(node, dev, oracle, create))["status"] == "0x1"
    for k in fleet.keys:
        fund(node, k)
        assert receipt(node, register_raw(node, board, k, vrf_secret(k)))["status"] == "0x1"
    sched = RoundSchedule(start, LENGTH, WINDOW, CONFIRMATIONS)
    miner.expect = lambda h: (
        len(fleet.procs)
        if (r := sched.round_at(h)) is not None and h == sched.boundary(r) + CONFIRMATIONS - 1
        else 0
    )
    fleet.configure(board, oracle)
    for i in range(AGENTS):
        fleet.start(i)
    stop = threading.Event()
    devices_publishing(fleet.broker, stop)
    board_art = load_artifact("ElectionBoard")
    posted_t = event_topic(board_art.event("CommitteePosted"))
    accepted_t = event_topic(art.event("ObservationAccepted"))
    withdrawn_t = event_topic(load_artifact("MasternodeRegistry").event("Withdrawn"))

    def committees() -> dict[int, tuple[str, ...]]:
        out = {}
        for lg in logs(node, board, posted_t):
            (elected,) = abi_decode(["address[]"], bytes.fromhex(lg["data"][2:]))
            out[int(lg["topics"][1], 16)] = tuple(a.lower() for a in elected)
        return out

    try:
        # Two epochs with every node up: each posted, each epoch's reports from its leader.
        wait_until(lambda: len(committees()) >= 3, 120, "three committees posted")
        # The leader of the next epoch, SIGKILLed once its round is decided, before its epoch
        # begins: the committee is posted and the epoch's reports made by the next elected.
        h = head(node)
        victim_epoch = (sched.round_at(h) or 0) + 1
        decided = sched.cutoff(victim_epoch) + CONFIRMATIONS + 1
        wait_until(lambda: head(node) >= decided, 60, f"round {victim_epoch} decided")
        miner.hold()  # the epoch does not begin while the test reads the result
        assert head(node) < sched.boundary(victim_epoch + 1)
        victim = fleet.results(victim_epoch)[0]
        fleet.kill(victim)
        miner.resume()
        # A masternode that is neither the victim nor elected next withdraws, for good.
        leaver_i = next(i for i, k in enumerate(fleet.keys) if k.address != victim)
        leaver = fleet.keys[leaver_i].address
        fleet.kill(leaver, signal.SIGTERM)
        rc = receipt(node, registry_tx(node, registry, fleet.keys[leaver_i], "withdraw"))
        assert rc["status"] == "0x1"
        withdrawn_at = hex_int(rc["blockNumber"])
        fleet.start(leaver_i)  # it runs on, not a masternode any more
        wait_until(lambda: max(committees()) >= victim_epoch + 4, 150, "four more committees")
    finally:
        stop.set()

    cs = committees()
    assert len(logs(node, registry, withdrawn_t)) == 1
    assert len(cs) >= 5
    reports: dict[int, list[tuple[int, str]]] = {}
    for lg in logs(node, oracle, accepted_t):
        block = hex_int(lg["blockNumber"])
        ep = epoch_at(sched, block)
        assert ep is not None
        txr = node.rpc("eth_getTransactionReceipt", [lg["transactionHash"]])
        assert isinstance(txr, dict)
        reports.setdefault(ep.round, []).append((block - ep.first, str(txr["from"]).lower()))
    # (the first rounds may have fewer candidates: agents still starting)
    assert sum(len(c) == SEATS for c in cs.values()) >= 4
    led = 0  # epochs with a report by their leader
    for e, committee in sorted(cs.items()):
        got = reports.get(e, [])
        if e == victim_epoch:
            # The leader died in it: what came after is reported by the next elected node.
            assert got, f"epoch {e}: nothing reported after its leader was killed"
            disputed = call(node, board, "ElectionBoard", "disputed", e)[0]
            # Before the fallback only the standbys report, each from its own turn (rank i
            # from i leader timeouts on: the board's rule). Whether the first standby reports
            # before the fallback depends on what it received in time; not asserted here.
            early = [(o, s) for o, s in got if o < FALLBACK]
            assert all(s in committee[1:] and o >= committee.index(s) * LEAD for o, s in early), (
                e,
                committee,
                disputed,
                early,
            )
            assert committee[0] == victim
        else:
            disputed = call(node, board, "ElectionBoard", "disputed", e)[0]
            early = [(o, s) for o, s in got if o < LEAD]
            assert all(s == committee[0] for _, s in early), (e, disputed, committee, early)
            led += any(s == committee[0] for _, s in got)
        if sched.cutoff(e) > withdrawn_at:
            assert leaver not in committee, f"epoch {e}: the withdrawn masternode elected"
    assert led >= 3
    assert sum(1 for e in cs if e in reports) >= 4
