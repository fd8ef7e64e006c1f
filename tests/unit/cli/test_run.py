"""The real `edgence-agent` command in a subprocess: init writes a private key and a config that
loads, run refuses a loose key or a bad config with exit code 2, verify checks envelopes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.attest.feeds import default_feed
from agent.attest.keys import GatewayKey, load_key_file
from agent.attest.observation import ObservationSigner, verify_envelope
from agent.config import load_config
from agent.errors import EnvelopeError, KeyFileError
from agent.model import AuthMethod, Eip712Domain, Reading, Transport

DOMAIN = Eip712Domain("Edgence", "2", 31337, "0x" + "00" * 20)


def cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m agent.cli ARGS` with a clean EDGENCE_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENCE_")}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,  # `run` would otherwise wait for brokers forever if a check regressed
        check=False,
    )


def printed_address(stdout: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("address")]
    return line.split()[-1]


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    """A directory made by a successful `init --dir`."""
    d = tmp_path / "etc"
    result = cli("init", "--dir", str(d), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return d


def reading(counter: int = 7) -> Reading:
    return Reading(
        device_id="sim-1",
        sensor="temp",
        value=2137,
        exponent=-2,
        unit="Cel",
        timestamp=1_700_000_000,
        counter=counter,
        transport=Transport.MQTT,
        auth=AuthMethod.ALLOWLIST,
    )


@pytest.fixture
def gateway() -> GatewayKey:
    return GatewayKey.generate()


@pytest.fixture
def signer(gateway: GatewayKey) -> ObservationSigner:
    return ObservationSigner(gateway, DOMAIN)


def tampered(envelope: bytes, path: str, value: Any) -> str:
    doc = json.loads(envelope)
    *parents, leaf = path.split(".")
    target = doc
    for part in parents:
        target = target[part]
    target[leaf] = value
    return json.dumps(doc, separators=(",", ":"))


# --- init -----------------------------------------------------------------------------------


def test_init_creates_a_0600_key_and_a_config_that_loads(agent_dir: Path) -> None:
    key_path = agent_dir / "gateway.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cfg = load_config(agent_dir / "agent.toml")
    assert cfg.gateway.key_file == key_path.resolve()
    assert cfg.gateway.data_dir == (agent_dir / "data").resolve()
    assert (agent_dir / "data").is_dir()


def test_init_writes_a_config_that_accepts_no_device_without_authentication(
    agent_dir: Path,
) -> None:
    cfg = load_config(agent_dir / "agent.toml")
    assert cfg.sources.mqtt.allowed_devices == ()
    assert cfg.sources.coap.allowed_devices == ()
    assert cfg.sources.serial.allowed_devices == frozenset()
    doctor = cli(
        "doctor", "--config", str(agent_dir / "agent.toml"), "--timeout", "0.5", cwd=agent_dir
    )
    (line,) = [ln for ln in doctor.stdout.splitlines() if ln.split()[1] == "allowlist"]
    assert line.startswith("ok    allowlist  no device is accepted without authentication")


def test_init_prints_the_checksummed_address_of_the_key_it_wrote(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    result = cli("init", "--dir", str(d), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    address = printed_address(result.stdout)
    key = load_key_file(d / "gateway.key")
    assert address == key.checksum_address
    assert address != address.lower()  # mixed case: EIP-55, not the lowercase form
    assert (
        f"# Gateway address (masternode signing key): {address}" in (d / "agent.toml").read_text()
    )


def test_init_writes_chain_id_and_broker_options_into_the_config(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    result = cli(
        "init",
        "--dir",
        str(d),
        "--chain-id",
        "8453",
        "--local-broker",
        "mqtt://10.0.0.5:1999",
        "--upstream",
        "mqtts://up.example:8884",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    cfg = load_config(d / "agent.toml")
    assert cfg.gateway.chain_id == 8453
    assert (cfg.sources.mqtt.broker.host, cfg.sources.mqtt.broker.port) == ("10.0.0.5", 1999)
    assert (cfg.bridge.broker.host, cfg.bridge.broker.port, cfg.bridge.broker.tls) == (
        "up.example",
        8884,
        True,
    )


def test_init_refuses_to_run_again_without_force_and_keeps_key_and_config(
    agent_dir: Path,
) -> None:
    key_before = (agent_dir / "gateway.key").read_bytes()
    config_before = (agent_dir / "agent.toml").read_bytes()
    result = cli("init", "--dir", str(agent_dir), cwd=agent_dir)
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert "--force" in result.stderr
    assert (agent_dir / "gateway.key").read_bytes() == key_before
    assert (agent_dir / "agent.toml").read_bytes() == config_before


def test_init_with_force_never_overwrites_the_key(agent_dir: Path) -> None:
    key_before = (agent_dir / "gateway.key").read_bytes()
    cli("init", "--dir", str(agent_dir), "--force", cwd=agent_dir)
    assert (agent_dir / "gateway.key").read_bytes() == key_before


def test_init_with_force_rewrites_the_config_for_the_existing_key(agent_dir: Path) -> None:
    existing = load_key_file(agent_dir / "gateway.key")
    (agent_dir / "agent.toml").write_text("# hand-edited, broken\n[gateway\n")
    result = cli("init", "--dir", str(agent_dir), "--force", cwd=agent_dir)
    assert result.returncode == 0, result.stderr
    assert load_config(agent_dir / "agent.toml").gateway.key_file.name == "gateway.key"
    assert printed_address(result.stdout) == existing.checksum_address


@pytest.mark.timeout(180)  # geth-standard scrypt three times (init, open, wrong passphrase)
def test_init_with_passphrase_file_writes_a_keystore_only_that_passphrase_opens(
    tmp_path: Path,
) -> None:
    d = tmp_path / "etc"
    passphrase_file = tmp_path / "pass.txt"
    passphrase_file.write_text("correct horse battery\n")  # the trailing newline is not part of it
    result = cli("init", "--dir", str(d), "--passphrase-file", str(passphrase_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "encrypted" in result.stdout
    key_path = d / "gateway.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    keystore = json.loads(key_path.read_text())
    assert keystore["version"] == 3
    assert keystore["crypto"]["kdf"] == "scrypt"
    assert load_key_file(key_path, "correct horse battery").checksum_address == printed_address(
        result.stdout
    )
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_key_file(key_path, "correct horse battery\n")
    with pytest.raises(KeyFileError, match="is encrypted"):
        load_key_file(key_path)


# --- run ------------------------------------------------------------------------------------


def test_run_refuses_a_key_readable_by_others_with_exit_2_and_the_chmod_fix(
    agent_dir: Path,
) -> None:
    key_path = (agent_dir / "gateway.key").resolve()
    os.chmod(key_path, 0o644)
    result = cli("run", "--config", str(agent_dir / "agent.toml"), cwd=agent_dir)
    assert result.returncode == 2
    assert str(key_path) in result.stderr
    assert f"chmod 600 {key_path}" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_config_error_exits_2_naming_file_and_key(agent_dir: Path) -> None:
    config = agent_dir / "agent.toml"
    config.write_text(config.read_text().replace("qos = 1", "qos = 2"))
    result = cli("run", "--config", str(config), cwd=agent_dir)
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "[sources.mqtt.qos] must be between 0 and 1, got 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_missing_config_exits_2_and_says_how_to_create_one(tmp_path: Path) -> None:
    result = cli("run", "--config", str(tmp_path / "none.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "none.toml" in result.stderr
    assert "edgence-agent init" in result.stderr


def test_run_refuses_an_unknown_log_level_from_the_environment(agent_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGENCE_")}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(agent_dir / "agent.toml")],
        env={**env, "EDGENCE_LOG_LEVEL": "loud"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "EDGENCE_LOG_LEVEL must be one of debug, info, warning, error; got 'loud'" in (
        result.stderr
    )


# --- verify ---------------------------------------------------------------------------------


def test_verify_reads_an_envelope_from_stdin_and_prints_the_signer(
    tmp_path: Path, gateway: GatewayKey, signer: ObservationSigner
) -> None:
    envelope = signer.sign(reading(), 42).envelope.decode()
    result = cli("verify", "-", cwd=tmp_path, stdin=envelope)
    assert result.returncode == 0, result.stdout + result.stderr
    feed = default_feed("sim-1", "temp").hex()
    assert result.stdout.splitlines() == [
        f"ok signer={gateway.address} seq=42 device=sim-1 sensor=temp value=21.37 unit=Cel "
        f"counter=7 timestamp=1700000000 chainId=31337 feed=0x{feed} transport=mqtt "
        f"assurance=0 (unauthenticated) contract={DOMAIN.verifying_contract}",
        "  not signed: reading.auth ('allowlist': the signature claims only its assurance "
        "level 0, not which method of that level)",
    ]


def test_verify_reads_a_pretty_printed_envelope_from_a_file(
    tmp_path: Path, gateway: GatewayKey, signer: ObservationSigner
) -> None:
    path = tmp_path / "obs.json"
    path.write_text(json.dumps(json.loads(signer.sign(reading(), 1).envelope), indent=2))
    result = cli("verify", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ok signer={gateway.address} seq=1 ")


def test_verify_checks_each_envelope_of_a_batched_message_on_its_own(
    tmp_path: Path, gateway: GatewayKey, signer: ObservationSigner
) -> None:
    good = [signer.sign(reading(), seq).envelope for seq in (5, 6)]
    bad = tampered(signer.sign(reading(), 7).envelope, "message.deviceCounter", 8).encode()
    batch = b"[" + b",".join([good[0], bad, good[1]]) + b"]"
    result = cli("verify", "-", cwd=tmp_path, stdin=batch.decode())
    assert result.returncode == 1
    oks = [line for line in result.stdout.splitlines() if line.startswith("ok signer")]
    assert [line.split()[2] for line in oks] == ["seq=5", "seq=6"]
    assert "INVALID #2: " in result.stdout and "digest mismatch" in result.stdout


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        ("message.deviceCounter", 8, "digest mismatch"),
        ("message.value", "2138", "disagrees"),
        ("reading.value", "99.99", "disagrees"),
        ("domain.chainId", 1, "digest mismatch"),
        ("gateway", "0x" + "11" * 20, "does not recover to gateway"),
        ("reading.auth", "hmac", "but the signed message.assurance is 0"),
        ("reading.transport", "ble", "disagrees with the signed message.transport"),
        ("message.feed", "0x" + "ab" * 32, "digest mismatch"),
        ("unsigned", [], "field unsigned must be"),
    ],
)
def test_verify_prints_invalid_and_exits_1_for_a_tampered_envelope(
    tmp_path: Path, signer: ObservationSigner, path: str, value: Any, why: str
) -> None:
    envelope = tampered(signer.sign(reading(), 42).envelope, path, value)
    result = cli("verify", "-", cwd=tmp_path, stdin=envelope)
    assert result.returncode == 1
    assert result.stdout.startswith("INVALID #1: ")
    assert why in result.stdout
    assert "ok signer" not in result.stdout


def test_verify_accepts_an_oracle_answer_and_checks_its_calldata(
    tmp_path: Path, gateway: GatewayKey, signer: ObservationSigner
) -> None:
    from agent.attest.observation import verify_envelope
    from agent.oracle import SUBMIT_SIGNATURE, submit_calldata

    obs = signer.sign(reading(), 5)
    data = "0x" + submit_calldata(verify_envelope(obs.envelope)).hex()
    submit = {"to": DOMAIN.verifying_contract, "function": SUBMIT_SIGNATURE, "data": data}
    answer = {"v": 1, "ok": True, "observation": json.loads(obs.envelope), "submit": submit}
    result = cli("verify", "-", cwd=tmp_path, stdin=json.dumps(answer))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ok signer={gateway.address} seq=5 ")
    assert f"answer: calldata is submit() of this observation to {submit['to']}" in result.stdout
    for bad, why in (
        ({**submit, "to": "0x" + "22" * 20}, "but the observation was signed for"),
        ({**submit, "data": data[:80] + "ff" + data[82:]}, "is not submit() of its observation"),
    ):
        result = cli("verify", "-", cwd=tmp_path, stdin=json.dumps({**answer, "submit": bad}))
        assert result.returncode == 1 and why in result.stdout, result.stdout


def test_verify_checks_each_envelope_of_json_lines(
    tmp_path: Path, gateway: GatewayKey, signer: ObservationSigner
) -> None:
    lines = [
        signer.sign(reading(counter=c), seq).envelope.decode()
        for seq, c in [(1, 10), (2, 11), (3, 12)]
    ]
    result = cli("verify", "-", cwd=tmp_path, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stdout + result.stderr
    out = [line for line in result.stdout.splitlines() if not line.startswith("  ")]
    assert len(out) == 3
    for line, (seq, counter) in zip(out, [(1, 10), (2, 11), (3, 12)], strict=True):
        assert line.startswith(f"ok signer={gateway.address} seq={seq} ")
        assert f" counter={counter} " in line


def test_verify_of_json_lines_reports_the_bad_line_by_number_and_exits_1(
    tmp_path: Path, signer: ObservationSigner
) -> None:
    good = [signer.sign(reading(), seq).envelope.decode() for seq in (1, 2, 3)]
    good[1] = tampered(good[1].encode(), "message.timestamp", 1)
    result = cli("verify", "-", cwd=tmp_path, stdin="\n\n".join(good))
    assert result.returncode == 1
    out = [line for line in result.stdout.splitlines() if not line.startswith("  ")]
    assert len(out) == 3
    assert out[0].startswith("ok signer=") and " seq=1 " in out[0]
    assert out[1].startswith("INVALID #2: digest mismatch")
    assert out[2].startswith("ok signer=") and " seq=3 " in out[2]


def test_verify_with_empty_input_exits_2(tmp_path: Path) -> None:
    result = cli("verify", "-", cwd=tmp_path, stdin="  \n")
    assert result.returncode == 2
    assert "no envelope given" in result.stderr


@pytest.mark.parametrize("text", ["5", "[]", "[{}]", "null", "true"])
def test_verify_of_json_that_is_not_an_object_prints_invalid_without_a_traceback(
    tmp_path: Path, text: str
) -> None:
    result = cli("verify", "-", cwd=tmp_path, stdin=text)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert result.stdout.startswith("INVALID #1")


def test_verify_refuses_an_envelope_with_a_duplicate_key(
    tmp_path: Path, signer: ObservationSigner
) -> None:
    envelope = signer.sign(reading(), 42).envelope.decode()
    shown = '{"device":"sim-1","sensor":"temp","value":"99.99","unit":"Cel",'
    shown += '"transport":"mqtt","auth":"allowlist"}'
    doubled = envelope.replace('"reading":', f'"reading":{shown},"reading":', 1)
    with pytest.raises(EnvelopeError, match="duplicate key"):
        verify_envelope(doubled)
    result = cli("verify", "-", cwd=tmp_path, stdin=doubled)
    assert result.returncode == 1
    assert result.stdout.startswith("INVALID #1: duplicate key 'reading'")


# --- masternode -----------------------------------------------------------------------------


def test_masternode_without_a_registry_exits_2_and_says_which_key(agent_dir: Path) -> None:
    result = cli("masternode", "status", "--config", str(agent_dir / "agent.toml"), cwd=agent_dir)
    assert result.returncode == 2
    assert "[masternode] registry is not set" in result.stderr
    assert "Traceback" not in result.stderr
