"""The doctor's checks over the network: a real MQTT CONNECT to each broker with the agent's
credentials, JSON-RPC to the full node, and the running agent's own health document."""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from agent.cli.checks import Check
from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.config import AgentConfig, BrokerEndpoint


def probe_mqtt(ep: BrokerEndpoint, timeout: float) -> tuple[bool, str]:
    """A real MQTT CONNECT with the agent's credentials and TLS settings, under a throwaway
    client id (never the agent's: that would take its session). (ok, what happened)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    v5 = ep.protocol == 5
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"edgence-doctor-{secrets.token_hex(4)}",
        clean_session=None if v5 else True,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    client.connect_timeout = timeout
    if ep.username is not None:
        password = None
        if ep.password_file is not None:
            from agent.mqtt import read_secret_file

            password = read_secret_file(ep.password_file)
        client.username_pw_set(ep.username, password)
    if ep.tls:
        client.tls_set(
            ca_certs=str(ep.ca_file) if ep.ca_file else None,
            certfile=str(ep.cert_file) if ep.cert_file else None,
            keyfile=str(ep.key_file) if ep.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(c: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        outcome.append("ok" if not rc.is_failure else f"refused: {rc}")
        done.set()

    def on_disconnect(c: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        if not done.is_set():
            outcome.append(f"closed before CONNACK ({rc})")
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(ep.host, ep.port, keepalive=max(5, int(timeout) + 5))
    except (OSError, ssl.SSLError, ValueError) as exc:
        return False, f"cannot connect: {exc}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return False, f"no CONNACK within {timeout:.0f}s"
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0] == "ok", outcome[0]


def check_broker(name: str, key: str, ep: BrokerEndpoint, enabled: bool, timeout: float) -> Check:
    if not enabled:
        return Check(name, "skip", f"{key}.enabled = false")
    try:
        ok, what = probe_mqtt(ep, timeout)
    except AgentError as exc:  # a password file with loose permissions
        return Check(name, "fail", exc.description, exc.fix or f"check {key}.password_file")
    if ok:
        return Check(name, "ok", f"{ep.url} accepts the agent's MQTT login")
    if "refused" in what and ("uthori" in what or "password" in what.lower()):
        fix = f"check {key}.username / {key}.password_file against the broker's password file"
    elif what.startswith("cannot connect") and ("SSL" in what or "certificate" in what):
        fix = f"check {key}.ca_file and the broker's certificate (its name must match {ep.host})"
    elif name == "local":
        fix = f"start the local broker (sudo systemctl start mosquitto) or fix {key}.url"
    else:
        fix = f"check the network and {key}.url; the agent keeps readings journaled meanwhile"
    return Check(name, "fail", f"{ep.url}: {what}", fix)


def json_rpc(url: str, method: str, timeout: float) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc = json.loads(resp.read(1 << 20))
    if not isinstance(doc, dict) or "error" in doc or "result" not in doc:
        raise ValueError(f"{method} answered {str(doc)[:200]}")
    return doc["result"]


def check_chain(cfg: AgentConfig | None, chain_url: str | None, timeout: float) -> Check:
    """The full node at --chain-url, else [chain] rpc_url when [chain] is enabled, answers
    JSON-RPC and is on gateway.chain_id (the EIP-712 domain every observation is signed for)."""
    url = chain_url or (cfg.chain.rpc_url if cfg is not None and cfg.chain.enabled else None)
    if url is None:
        return Check("chain", "skip", "no full node configured ([chain] enabled, rpc_url)")
    try:
        chain_id = int(str(json_rpc(url, "eth_chainId", timeout)), 16)
        height = int(str(json_rpc(url, "eth_blockNumber", timeout)), 16)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(
            "chain",
            "fail",
            f"full node at {url} does not answer JSON-RPC: {reason}",
            "start the full node (or fix chain.rpc_url); it must serve HTTP JSON-RPC",
        )
    if cfg is None:
        return Check("chain", "ok", f"{url} chain id {chain_id}, block {height} (not compared)")
    expected = cfg.gateway.chain_id
    if chain_id != expected:
        return Check(
            "chain",
            "fail",
            f"the node at {url} is chain {chain_id} but gateway.chain_id = {expected}",
            f"set gateway.chain_id = {chain_id} if that is the right chain (observations are "
            f"signed for gateway.chain_id), or point chain.rpc_url at a node of chain {expected}",
        )
    return Check("chain", "ok", f"{url} chain id {chain_id}, block {height}")


def check_agent(cfg: AgentConfig, timeout: float) -> Check:
    """The running agent's health document: ok when it is ready and its upstream link (if any)
    is up; a warning while it is not ready or while the upstream link is down."""
    from agent.cli.status import HealthUnavailable, config_gateway, fetch_health

    if not cfg.metrics.enabled:
        return Check("agent", "skip", "metrics.enabled = false: cannot ask the running agent")
    try:
        health = fetch_health(cfg.metrics.url, timeout, gateway=config_gateway(cfg))
    except HealthUnavailable as exc:
        if exc.kind == "unreachable":
            return Check(
                "agent",
                "warn",
                exc.description,
                "sudo systemctl status edgence-agent; journalctl -u edgence-agent",
            )
        # Another program's document is never read as this agent's.
        return Check("agent", "fail", exc.description, exc.fix)
    up = health.get("upstream", {})
    ready = bool(health.get("ready"))
    down = bool(up.get("enabled")) and not up.get("connected")
    link = "connected" if up.get("connected") else "DOWN" if up.get("enabled") else "disabled"
    backlog = health.get("journal", {}).get("backlog")
    state = "ready" if ready else "NOT READY (a source has not connected yet)"
    detail = f"running, {state}, upstream {link}, backlog {backlog}"
    if not ready:
        return Check(
            "agent",
            "warn",
            detail,
            "wait a few seconds and run doctor again; if it stays, see which source is "
            "waiting with `edgence-agent status` and `journalctl -u edgence-agent`",
        )
    if down:
        return Check(
            "agent",
            "warn",
            f"{detail} ({up.get('url')}): readings wait in the journal",
            "check bridge.url and the network to the upstream broker "
            "(journalctl -u edgence-agent shows the bridge's connection attempts)",
        )
    return Check("agent", "ok", detail)
