"""`edgence-agent doctor` on a healthy gateway (real Mosquitto brokers, a running agent, a
JSON-RPC node) passes; each injected fault is reported on its own line with its fix, and what
is not broken but unsafe or not yet working (an allowlisted device, an agent not ready, its
upstream link down) is a WARN line.

The full node is a real anvil. Bluetooth adapters are a directory laid out like
/sys/class/bluetooth: there is no radio on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.chainclient.anvil import LocalAnvil
from agent.cli.doctor import Check, DoctorOptions, run_checks
from agent.localbroker import LocalMosquitto, free_port

from ..conftest import AgentProcess, agent_config_dict, to_toml, wait_until, write_agent_dir


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalAnvil]:
    with LocalAnvil(tmp_path / "anvil-31337") as n:
        yield n


@pytest.fixture
def gateway(
    tmp_path: Path, local_broker: LocalMosquitto, upstream_broker: LocalMosquitto
) -> Callable[..., Path]:
    """Writes a gateway's config dir (config, 0600 key, 0700 data dir); returns agent.toml."""

    def make(name: str = "gw", **over: Any) -> Path:
        cfg = agent_config_dict(
            local_broker,
            upstream_broker,
            journal={"max_bytes": "4 MiB"},
            metrics={"listen": f"127.0.0.1:{free_port()}"},
        )
        cfg["sources"]["mqtt"]["allowed_devices"] = []  # an installed gateway allowlists none
        for section, values in over.items():
            cfg.setdefault(section, {}).update(values)
        path, _ = write_agent_dir(tmp_path / name, cfg)
        (tmp_path / name / "data").mkdir(mode=0o700, exist_ok=True)
        return path

    return make


def doctor(config: Path, **kw: Any) -> dict[str, Check]:
    checks = run_checks(DoctorOptions(config=config, check_agent=False, timeout=3.0, **kw))
    return {c.name: c for c in checks}


def cli_doctor(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "doctor", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def line_of(out: subprocess.CompletedProcess[str], name: str) -> str:
    return next(x for x in out.stdout.splitlines() if x.split()[1] == name)


# -- healthy ----------------------------------------------------------------------------


def test_healthy_gateway_passes_every_check_and_exits_0(
    gateway: Callable[..., Path],
    node: LocalAnvil,
    agent_process: Callable[[Path], AgentProcess],
) -> None:
    config = gateway()
    agent = agent_process(config)
    agent.start()
    out = cli_doctor(config, "--chain-url", node.url)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines()}
    for name in ("config", "key", "allowlist", "data", "disk", "local", "upstream", "chain"):
        assert lines[name].startswith("ok "), lines[name]
    assert "chain id 31337, block 0" in lines["chain"]
    assert lines["agent"].startswith("ok    agent      running, ready, upstream connected, ")
    assert "no device is accepted without authentication" in lines["allowlist"]
    for name in ("secrets", "bluetooth", "serial"):
        assert lines[name].startswith("skip "), lines[name]  # not configured here
    assert not any(line.startswith(("FAIL", "WARN")) for line in out.stdout.splitlines())
    as_json = json.loads(cli_doctor(config, "--chain-url", node.url, "--json").stdout)
    assert {c["name"]: c["status"] for c in as_json}["local"] == "ok"


# -- injected faults --------------------------------------------------------------------


def test_key_readable_by_others_fails_with_chmod_fix_and_exit_1(
    gateway: Callable[..., Path],
) -> None:
    config = gateway()
    key = config.parent / "gateway.key"
    key.chmod(0o644)
    out = cli_doctor(config)
    assert out.returncode == 1
    line = next(x for x in out.stdout.splitlines() if x.split()[1] == "key")
    assert line.startswith("FAIL  key")
    assert "mode 0644" in line and line.endswith(f"-- fix: chmod 600 {key}")


def test_local_broker_down_fails_with_how_to_start_it(
    gateway: Callable[..., Path], local_broker: LocalMosquitto
) -> None:
    config = gateway()
    local_broker.stop()
    c = doctor(config)
    assert c["local"].status == "fail"
    assert local_broker.url in c["local"].detail and "cannot connect" in c["local"].detail
    assert c["local"].fix is not None and "systemctl start mosquitto" in c["local"].fix
    assert c["upstream"].status == "ok"


def test_upstream_down_fails_and_says_readings_stay_journaled(
    gateway: Callable[..., Path], upstream_broker: LocalMosquitto
) -> None:
    config = gateway()
    upstream_broker.stop()
    c = doctor(config)
    assert c["upstream"].status == "fail" and c["local"].status == "ok"
    assert c["upstream"].fix is not None and "bridge.url" in c["upstream"].fix


def test_broker_refusing_the_login_points_at_username_and_password_file(
    tmp_path: Path, upstream_broker: LocalMosquitto, gateway: Callable[..., Path]
) -> None:
    passwd = tmp_path / "mosq-passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "agent", "right"], check=True)
    passwd.chmod(0o644)  # mosquitto (possibly another user) reads it
    locked = LocalMosquitto(tmp_path / "locked", name="locked", extra=f"password_file {passwd}")
    locked.conf.write_text(locked.conf.read_text().replace("allow_anonymous true", ""))
    with locked:
        secret = tmp_path / "gw" / "local.pass"
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("wrong\n")
        secret.chmod(0o600)
        config = gateway(
            sources={"mqtt": {"url": locked.url, "username": "agent", "password_file": str(secret)}}
        )
        c = doctor(config)
        assert c["local"].status == "fail"
        assert "refused" in c["local"].detail
        assert c["local"].fix is not None and "sources.mqtt.password_file" in c["local"].fix
        secret.write_text("right\n")
        assert doctor(config)["local"].status == "ok"


def test_loose_broker_password_file_fails_the_secrets_check(
    tmp_path: Path, gateway: Callable[..., Path]
) -> None:
    secret = tmp_path / "gw" / "upstream.pass"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("pw\n")
    secret.chmod(0o640)
    config = gateway(bridge={"username": "gw", "password_file": str(secret)})
    c = doctor(config)
    assert c["secrets"].status == "fail"
    assert c["secrets"].fix == f"chmod 600 {secret}"


def test_wrong_chain_id_fails_naming_both_ids_and_the_setting(
    gateway: Callable[..., Path], tmp_path: Path
) -> None:
    with LocalAnvil(tmp_path / "anvil-1", chain_id=1) as node:
        c = doctor(gateway(), chain_url=node.url)
    assert c["chain"].status == "fail"
    assert "is chain 1 but gateway.chain_id = 31337" in c["chain"].detail
    assert c["chain"].fix is not None and "set gateway.chain_id = 1" in c["chain"].fix


def test_unreachable_full_node_fails(gateway: Callable[..., Path]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    c = doctor(gateway(), chain_url=url)
    assert c["chain"].status == "fail" and url in c["chain"].detail
    assert c["chain"].fix is not None and "start the full node" in c["chain"].fix


def test_chain_url_is_read_from_the_chain_section(
    gateway: Callable[..., Path], tmp_path: Path
) -> None:
    with LocalAnvil(tmp_path / "anvil-5", chain_id=5) as node:
        config = gateway()
        config.write_text(
            config.read_text() + to_toml({"chain": {"enabled": True, "rpc_url": node.url}})
        )
        c = doctor(config)
    assert c["chain"].status == "fail" and node.url in c["chain"].detail
    assert "is chain 5 but" in c["chain"].detail


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs (a real filesystem that fills up), or, where mounting is not allowed,
    a plain directory (the test then configures a journal bound larger than the free space)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    yield mnt
    if mounted:
        subprocess.run(["umount", str(mnt)], check=False)


def test_journal_disk_nearly_full_fails_with_a_bound_that_would_fit(
    gateway: Callable[..., Path], small_disk: Path
) -> None:
    data = small_disk / "data"
    data.mkdir(mode=0o700)
    is_tmpfs = os.statvfs(small_disk).f_blocks * os.statvfs(small_disk).f_frsize <= 64 * 2**20
    if is_tmpfs:
        config = gateway(gateway={"data_dir": str(data)}, journal={"max_bytes": "8 MiB"})
        assert doctor(config)["disk"].status == "ok"  # 64 MiB free, 8 + 16 needed
        (small_disk / "filler").write_bytes(b"\0" * 50 * 2**20)  # now ~14 MiB free
    else:
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        config = gateway(gateway={"data_dir": str(data)}, journal={"max_bytes": free + 2**30})
    c = doctor(config)["disk"]
    assert c.status == "fail", c
    assert "free on the disk of" in c.detail
    assert c.fix is not None and "set journal.max_bytes below" in c.fix


def test_clock_before_this_release_fails(gateway: Callable[..., Path]) -> None:
    # A fake clock: this machine's real clock cannot be set back by a test.
    c = doctor(gateway(), clock=lambda: 86_400.0)
    assert c["clock"].status == "fail" and "1970-01-02" in c["clock"].detail
    assert c["clock"].fix is not None and "timedatectl set-ntp true" in c["clock"].fix


def test_ble_source_without_adapter_fails_and_with_one_passes(
    gateway: Callable[..., Path], tmp_path: Path
) -> None:
    config = gateway()
    config.write_text(config.read_text() + "[sources.ble]\nenabled = true\n")
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "bluetooth").mkdir(parents=True)
    c = doctor(config, sysfs=sysfs)["bluetooth"]
    assert c.status == "fail" and c.fix is not None and "sources.ble.enabled = false" in c.fix
    (sysfs / "class" / "bluetooth" / "hci0").mkdir()
    rf = sysfs / "class" / "rfkill" / "rfkill0"
    rf.mkdir(parents=True)
    (rf / "type").write_text("bluetooth\n")
    (rf / "soft").write_text("1\n")
    (rf / "hard").write_text("0\n")
    c = doctor(config, sysfs=sysfs)["bluetooth"]
    assert c.status == "fail" and c.fix == "rfkill unblock bluetooth"
    (rf / "soft").write_text("0\n")
    assert doctor(config, sysfs=sysfs)["bluetooth"].status == "ok"


def test_configured_serial_port_missing_fails_and_a_real_pty_passes(
    gateway: Callable[..., Path],
) -> None:
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        config = gateway()
        base = config.read_text()
        config.write_text(base + f'[[sources.serial.ports]]\npath = "{port}"\n')
        assert doctor(config)["serial"].status == "ok"
        config.write_text(base + '[[sources.serial.ports]]\npath = "/dev/ttyUSB-not-there"\n')
        c = doctor(config)["serial"]
        assert c.status == "fail" and "/dev/ttyUSB-not-there does not exist" in c.detail
        assert c.fix is not None and "/dev/serial/by-id/" in c.fix
    finally:
        os.close(master)
        os.close(slave)


def test_missing_and_invalid_config_fail_with_init_or_edit(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "agent.toml"
    c = doctor(missing)["config"]
    assert c.status == "fail" and c.fix is not None
    assert c.fix.startswith(f"sudo edgence-agent init --dir {missing.parent}, ")
    assert "--config" in c.fix and "EDGENCE_CONFIG" in c.fix
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nkey_file = "k"\n[bridge]\nurl = "http://x"\n')
    c = doctor(bad)["config"]
    assert c.status == "fail" and "[bridge.url]" in c.detail
    assert c.fix == f"edit {bad} ([bridge.url])"


def test_agent_not_running_is_a_warning_not_a_failure(gateway: Callable[..., Path]) -> None:
    checks = run_checks(DoctorOptions(config=gateway(), timeout=2.0))
    agent = next(c for c in checks if c.name == "agent")
    assert agent.status == "warn" and "not answering" in agent.detail
    assert agent.fix is not None and "systemctl status edgence-agent" in agent.fix


def test_device_keys_readable_by_others_fail_the_secrets_check(
    gateway: Callable[..., Path],
) -> None:
    config = gateway()
    keys = config.parent / "data" / "devices" / "keys.json"
    keys.parent.mkdir(parents=True)
    keys.write_text("{}")
    keys.chmod(0o600)
    assert doctor(config)["secrets"].status == "ok"
    keys.chmod(0o644)
    c = doctor(config)["secrets"]
    assert c.status == "fail" and "[enrollment.registry_dir]" in c.detail
    assert c.fix == f"chmod 600 {keys}"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_data_file_owned_by_another_user_fails_with_chown(gateway: Callable[..., Path]) -> None:
    """What `sudo edgence-agent pair` or a run as root leaves for a service running as
    `edgence`: the data directory's owner can no longer write its own registry."""
    config = gateway()
    data = config.parent / "data"
    registry = data / "devices"
    registry.mkdir()
    os.chown(data, 4321, 4321)
    os.chown(registry, 4321, 4321)
    assert doctor(config)["data"].status == "ok"
    (registry / "registry.json").write_text("{}")  # created by root
    c = doctor(config)["data"]
    assert c.status == "fail" and "registry.json is owned by root" in c.detail
    assert c.fix == f"chown -R 4321: {data}"


# -- warnings ---------------------------------------------------------------------------


def test_allowlisted_devices_are_a_warning_naming_each_id_and_its_key(
    gateway: Callable[..., Path],
) -> None:
    config = gateway()
    config.write_text(
        config.read_text().replace("allowed_devices = []", 'allowed_devices = ["sim-1", "x-2"]')
    )
    out = cli_doctor(config)
    line = line_of(out, "allowlist")
    assert line.startswith("WARN  allowlist  accepted WITHOUT authentication")
    assert "sim-1, x-2 in sources.mqtt.allowed_devices" in line
    assert line.endswith(
        "-- fix: enroll each device (`edgence-agent pair ID`) and remove it from the list"
    )
    assert out.returncode == 0  # a warning, not a failure


def test_a_running_agent_whose_upstream_is_down_is_a_warning_not_ok(
    gateway: Callable[..., Path],
    upstream_broker: LocalMosquitto,
    agent_process: Callable[[Path], AgentProcess],
) -> None:
    config = gateway()
    agent = agent_process(config)
    agent.start()
    upstream_broker.stop()
    wait_until(lambda: "upstream DOWN" in line_of(cli_doctor(config), "agent"), 30, "link down")
    line = line_of(cli_doctor(config), "agent")
    assert line.startswith("WARN  agent      running, ready, upstream DOWN, backlog ")
    assert "readings wait in the journal -- fix: check bridge.url" in line


def test_an_agent_not_ready_yet_is_a_warning(
    gateway: Callable[..., Path],
    local_broker: LocalMosquitto,
    agent_process: Callable[[Path], AgentProcess],
) -> None:
    config = gateway()
    local_broker.stop()  # the MQTT source cannot subscribe: the agent never becomes ready
    agent = agent_process(config)
    agent.start(wait_ready=False)
    wait_until(lambda: "event=metrics_listening" in agent.log_text(), 30, "metrics endpoint")
    line = line_of(cli_doctor(config), "agent")
    assert line.startswith("WARN  agent      running, NOT READY (a source has not connected yet)")
    assert "-- fix: wait a few seconds and run doctor again" in line
