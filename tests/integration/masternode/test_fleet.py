"""Proof of service run by the elected committee: seven agents as processes (`edgence-agent
run`), one anvil, one Mosquitto (the devices' broker and the upstream one), a simulated device.
The agents elect committees (vrf mode) and post them on the ElectionBoard; ServiceStanding
takes its committee from there, and each agent on an epoch's committee probes every masternode
over the upstream broker and submits its verdicts by itself ([masternode.probe]).

One agent's oracle endpoint reaches the upstream broker through a TCP gate the test closes:
its process runs on and keeps sending heartbeats, its oracle no longer answers. It is out of
service within K epochs, earns nothing meanwhile, and is restored once the gate opens again.
The rewards, claimed by every agent with `edgence-agent masternode rewards`, are equal among the
nodes in service. The per-epoch on-chain table is printed (run with -s to see it)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from eth_abi.abi import decode as abi_decode
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.keys import GatewayKey, write_key_file
from agent.attest.vrfkey import vrf_secret
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import encode_call, event_topic
from agent.cli import main as cli_main
from agent.localbroker import LocalMosquitto
from agent.simulator import SimulatedDevice
from bench.agentproc import spawn_agent, wait_ready
from tests.integration.conftest import agent_config_dict, to_toml, wait_until
from tests.integration.election.conftest import (
    Miner,
    call,
    deploy,
    deploy_board,
    fund,
    head,
    receipt,
    register_raw,
    send_raw,
)

pytestmark = pytest.mark.slow

AGENTS = 7
BAD = AGENTS - 1  # the agent whose oracle endpoint is gated
LENGTH, WINDOW, CONFIRMATIONS, SEATS = 24, 5, 2, 3  # an epoch is LENGTH blocks
FAIL_EPOCHS = 2  # K
HEARTBEAT_WINDOW, HEARTBEAT_EVERY = 400, 20
REWARD = 7 * 10**15  # wei per epoch (divisible by 1..7 nodes)
COLLATERAL = 10**18


class TcpGate:
    """A TCP relay from a local port to `target`: `close()` refuses new connections and cuts
    the open ones (the broker unreachable for whoever connects through it), `open()` relays
    again on the same port. A real network fault, produced for real."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                a, _ = ls.accept()
            except OSError:
                return
            if self._listener is not ls:
                a.close()
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:
                a.close()
                continue
            with self._lock:
                self._conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # socket listening until that call returns.
            with contextlib.suppress(OSError):
                ls.shutdown(socket.SHUT_RDWR)
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[LocalAnvil, Miner]]:
    with LocalAnvil(tmp_path / "anvil", mining=False) as n:
        miner = Miner(n, gap=0.25, patience=10.0)
        try:
            yield n, miner
        finally:
            miner.stop()


def device_publishing(broker: LocalMosquitto, stop: threading.Event) -> None:
    """The probed sensor: a frame of dev-1 every second, which every agent signs."""

    def run() -> None:
        dev = SimulatedDevice("dev-1", [("temp", 2100, -2, "Cel")])
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        while not stop.wait(1.0):
            client.publish("devices/dev-1/up", dev.next_frame(), qos=1)
        client.loop_stop()
        client.disconnect()

    threading.Thread(target=run, daemon=True).start()


def logs(node: LocalAnvil, address: str, topic: str) -> list[dict[str, Any]]:
    out = node.rpc("eth_getLogs", [{"address": address, "fromBlock": "0x0", "topics": [topic]}])
    assert isinstance(out, list)
    return out


def address_topic(lg: dict[str, Any], i: int) -> str:
    return "0x" + str(lg["topics"][i])[-40:]


@pytest.mark.timeout(420)
def test_the_elected_committee_puts_a_node_that_stops_serving_out_and_back(
    node: tuple[LocalAnvil, Miner],
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    anvil, miner = node
    keys = [GatewayKey.generate() for _ in range(AGENTS)]
    addrs = [k.address.lower() for k in keys]
    registry = deploy(anvil, "MasternodeRegistry", COLLATERAL, HEARTBEAT_WINDOW)
    for k in keys:
        fund(anvil, k)
    # Registered (with their VRF keys) two rounds before the first round they stand in.
    board_start = head(anvil) + 3 * LENGTH
    board = deploy_board(anvil, "vrf", board_start, LENGTH, WINDOW, registry, 3, LENGTH - 4)
    for k in keys:
        assert receipt(anvil, register_raw(anvil, board, k, vrf_secret(k)))["status"] == "0x1"
    standing = deploy(anvil, "ServiceStanding", board, FAIL_EPOCHS)
    dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    attach = encode_call(
        load_artifact("MasternodeRegistry").function("attachServiceStanding"), standing
    )
    assert receipt(anvil, send_raw(anvil, dev, registry, attach))["status"] == "0x1"
    while head(anvil) < board_start + LENGTH + 1:  # the pool's epochs are the board's
        anvil.rpc("evm_mine")
    rewards = deploy(anvil, "RewardPool", registry, REWARD, LENGTH, board_start + LENGTH + 1)
    fund_tx = send_raw(anvil, dev, rewards, b"", value=100 * REWARD)
    assert receipt(anvil, fund_tx)["status"] == "0x1"

    gate = TcpGate(("127.0.0.1", upstream_broker.port))
    gate.open()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    dirs = [tmp_path / f"mn{i}" for i in range(AGENTS)]
    miner.hold()  # every agent up before the epochs go on: equal chances to check in
    for i, k in enumerate(keys):
        oracle_url = f"mqtt://127.0.0.1:{gate.port}" if i == BAD else upstream_broker.url
        cfg = agent_config_dict(
            upstream_broker,
            upstream_broker,
            gateway={"chain_id": anvil.chain_id},
            sources={"mqtt": {"url": upstream_broker.url, "allowed_devices": ["dev-1"]}},
            chain={"enabled": True, "rpc_url": anvil.url, "poll_interval": 0.2},
            election={
                "enabled": True,
                "mode": "vrf",
                "board": board,
                "k": SEATS,
                "round_length": LENGTH,
                "cutoff": WINDOW,
                "confirmations": CONFIRMATIONS,
            },
            oracle={"enabled": True, "mqtt": {"url": oracle_url}},
            forward={"enabled": True, "mqtt": {"url": upstream_broker.url}},
            masternode={
                "registry": registry,
                "rewards": rewards,
                "heartbeat_every_blocks": HEARTBEAT_EVERY,
                "check_interval": 0.3,
                "probe": {"enabled": True, "device": "dev-1", "sensor": "temp", "timeout": 3},
            },
        )
        dirs[i].mkdir()
        write_key_file(dirs[i] / "gateway.key", k)
        (dirs[i] / "agent.toml").write_text(to_toml(cfg))
        log = dirs[i] / "agent.log"
        procs[i] = spawn_agent(dirs[i] / "agent.toml", log)
    try:
        for i, p in procs.items():
            wait_ready(p, dirs[i] / "agent.log", 90)
        stop = threading.Event()
        device_publishing(upstream_broker, stop)

        # At a boundary's submission block every active masternode sends its proof: wait.
        def expect(h: int) -> int:
            if h < board_start or (h - board_start) % LENGTH != CONFIRMATIONS - 1:
                return 0
            return sum(
                bool(call(anvil, registry, "MasternodeRegistry", "isActive", a)[0]) for a in addrs
            )

        miner.expect = expect
        miner.resume()

        def epoch() -> int:
            return int(call(anvil, standing, "ServiceStanding", "currentEpoch")[0])

        def passes(e: int, i: int) -> bool:
            p_, f_, decided = call(anvil, standing, "ServiceStanding", "tally", e, addrs[i])
            return bool(decided and p_ > f_)

        # Healthy epochs: everyone passes by the committee's verdicts.
        wait_until(
            lambda: epoch() >= 2 and all(passes(epoch() - 1, i) for i in range(AGENTS)),
            180,
            "an epoch every node passed",
        )
        gate.close()
        closed_in = epoch()
        out_t = event_topic(load_artifact("ServiceStanding").event("OutOfService"))
        restored_t = event_topic(load_artifact("ServiceStanding").event("Restored"))
        wait_until(lambda: bool(logs(anvil, standing, out_t)), 180, "the gated node out")
        (out_log,) = logs(anvil, standing, out_t)
        out_epoch = int(abi_decode(["uint256"], bytes.fromhex(out_log["data"][2:]))[0])
        assert address_topic(out_log, 1) == addrs[BAD]
        # K failed epochs in a row; the epoch the gate closed in may have been probed before.
        assert out_epoch <= closed_in + FAIL_EPOCHS
        assert call(anvil, registry, "MasternodeRegistry", "isActive", addrs[BAD]) == (False,)
        beat_t = event_topic(load_artifact("MasternodeRegistry").event("Heartbeat"))

        def beats() -> list[dict[str, Any]]:
            return [
                lg for lg in logs(anvil, registry, beat_t) if address_topic(lg, 1) == addrs[BAD]
            ]

        before = len(beats())
        wait_until(lambda: epoch() > out_epoch + 1, 120, "an epoch out of service")
        wait_until(lambda: len(beats()) > before, 60, "the gated node's heartbeats go on")
        gate.open()
        opened_in = epoch()
        wait_until(lambda: bool(logs(anvil, standing, restored_t)), 240, "the node restored")
        (back_log,) = logs(anvil, standing, restored_t)
        back_epoch = int(abi_decode(["uint256"], bytes.fromhex(back_log["data"][2:]))[0])
        assert back_epoch >= opened_in
        assert call(anvil, registry, "MasternodeRegistry", "isActive", addrs[BAD]) == (True,)
        wait_until(lambda: epoch() > back_epoch + 1, 120, "an epoch back in service")
        last = epoch()
        stop.set()
    finally:
        miner.hold()
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(30)
        gate.close()
        miner.expect = lambda h: 0
        miner.resume()  # the claims below are mined

    # The per-epoch table, from the chain: the committee posted, each node's verdicts, check-in.
    posted_t = event_topic(load_artifact("ElectionBoard").event("CommitteePosted"))
    committees: dict[int, tuple[str, ...]] = {}
    for lg in logs(anvil, board, posted_t):
        (elected,) = abi_decode(["address[]"], bytes.fromhex(lg["data"][2:]))
        committees[int(lg["topics"][1], 16)] = tuple(a.lower() for a in elected)
    table = [
        f"gate closed in epoch {closed_in}, opened in epoch {opened_in}; node {BAD} gated",
        "epoch  committee  in service (count)  per node: C checked in, pass/fail verdicts, x out",
    ]
    counts: dict[int, int] = {}
    out_at: dict[int, bool] = {}
    for e in range(last):
        counts[e] = int(call(anvil, rewards, "RewardPool", "inServiceCount", e)[0])
        members = ",".join(str(addrs.index(m)) for m in committees.get(e, ()) if m in addrs)
        cells = []
        for i, a in enumerate(addrs):
            chk = call(anvil, rewards, "RewardPool", "checkedIn", e, a)[0]
            p_, f_, _ = call(anvil, standing, "ServiceStanding", "tally", e, a)
            if i == BAD:
                out_at[e] = out_epoch <= e < back_epoch
            x = "x" if i == BAD and out_at[e] else " "
            cells.append(f"{'C' if chk else '-'}{p_}/{f_}{x}")
        table.append(f"{e:>5}  {members:<9}  {counts[e]:>17}  " + "  ".join(cells))
    for e, committee in committees.items():
        if e < last:
            assert len(committee) == SEATS or e < 2, (e, committee)

    # The gated node did not check in while it was out; the six others did.
    assert any(counts[e] == AGENTS for e in range(last)), "no epoch with every node checked in"
    for e in range(out_epoch + 1, back_epoch):
        assert not call(anvil, rewards, "RewardPool", "checkedIn", e, addrs[BAD])[0]
        assert counts[e] == AGENTS - 1, (e, counts[e])

    # Rewards: each agent claims with the CLI (agents stopped: one sender per key at a time).
    claimed = []
    for i in range(AGENTS):
        expected = sum(
            REWARD // counts[e]
            for e in range(last)
            if counts[e] and call(anvil, rewards, "RewardPool", "checkedIn", e, addrs[i])[0]
        )
        capsys.readouterr()
        assert cli_main(["masternode", "rewards", "--config", str(dirs[i] / "agent.toml")]) == 0
        assert f"claimed {expected} wei" in capsys.readouterr().out
        claimed.append(expected)
    healthy = claimed[:BAD]
    table.append("claimed (wei): " + ", ".join(str(x) for x in claimed))
    with capsys.disabled():
        print("\n" + "\n".join(table))
    # Equal among the nodes in service: the healthy ones checked in for the same epochs.
    assert len(set(healthy)) == 1, healthy
    assert claimed[BAD] < healthy[0]
