"""Home Assistant MQTT discovery ([homeassistant], off by default): a pipeline sink that makes
the gateway's devices and sensors appear in Home Assistant, with their latest accepted values.

What it publishes (payloads in agent/hapayload.py), all retained, QoS 1, on its own connection:
- a discovery config per sensor of each device: enrolled devices' declared sensors as soon as
  the registry lists them, any other (device, sensor) when its first reading is accepted;
- per device, a JSON state document with the newest accepted value of each of its sensors, at
  most once per `state_interval` (a flood is coalesced, the newest values win);
- the agent's availability: "online" once the agent is ready, "offline" when it stops, and
  "offline" as the connection's last will when it dies;
- a revoked device's configs and state as empty payloads (Home Assistant removes the entities).
Given `commands` (agent/hacommands.py, [[homeassistant.commands]]), each device's commands are
announced as buttons or switches, and the presses Home Assistant publishes on their command
topics are handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as paho

from agent import __version__
from agent.component import Health, State
from agent.config.homeassistant import HomeAssistantConfig
from agent.hapayload import (
    AVAILABLE,
    NOT_AVAILABLE,
    DeviceAction,
    StateCoalescer,
    Topics,
    action_config,
    encode,
    gateway_config,
    sensor_config,
)
from agent.logs import event
from agent.model import Observation
from agent.mqtt import MqttConnection

if TYPE_CHECKING:
    from agent.hacommands import HaCommands

REVOKED = "revoked"
# Entities per device: a device may name any sensor in its frames; Home Assistant should not
# get an unbounded number of entities from one of them (each is a retained config).
MAX_SENSORS_PER_DEVICE = 64


class EnrolledDevice(Protocol):
    """What discovery reads of a registry record (agent.devices.registry.DeviceRecord)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def sensors(self) -> tuple[tuple[str, str], ...]: ...


class HomeAssistantDiscovery:
    """The [homeassistant] component. `offer` is the pipeline sink; `run()` keeps the broker
    connection, follows the registry and says "online" once `agent_ready` is set."""

    name = "homeassistant"

    def __init__(
        self,
        cfg: HomeAssistantConfig,
        *,
        gateway: str,
        enrolled: Callable[[], Mapping[str, EnrolledDevice]],
        agent_ready: asyncio.Event,
        client_id: str,
        actions: Mapping[str, Sequence[DeviceAction]] | None = None,
        poll_s: float = 0.5,
        logger: logging.Logger | None = None,
    ) -> None:
        assert cfg.mqtt is not None  # the reader always sets it
        self.cfg = cfg
        self.topics = Topics(cfg.discovery_prefix, cfg.topic_prefix, gateway)
        self.enrolled = enrolled
        self.agent_ready = agent_ready
        self.actions = dict(actions or {})
        self.poll_s = poll_s
        self.log = logger or logging.getLogger("agent.hadiscovery")
        self.conn = MqttConnection(
            cfg.mqtt,
            client_id=client_id,
            clean_start=True,
            name="homeassistant",
            will=(self.topics.availability, NOT_AVAILABLE.encode()),
            logger=self.log,
        )
        self.conn.on_connected = self._on_connected
        self.conn.client.on_message = self._on_message
        self.commands: HaCommands | None = None
        self.ready = asyncio.Event()
        self.states = StateCoalescer(cfg.state_interval_s)
        # device -> {config topic: payload}: what Home Assistant should have, re-sent on connect
        self._configs: dict[str, dict[str, bytes]] = {}
        self._names: dict[str, str] = {}
        self._units: dict[tuple[str, str], str] = {}  # (device, sensor) -> frame unit announced
        # device -> config and state topics cleared at revocation (cleared again on connect)
        self._revoked: dict[str, set[str]] = {}
        self._registry_view: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {}
        self._over_limit: set[str] = set()  # devices told about the limit (logged once)
        self._timer: asyncio.TimerHandle | None = None
        self._online = False
        self._stopping = False
        self.published_states = 0
        self.published_configs = 0

    def use_commands(self, commands: HaCommands) -> None:
        """Announce `commands`' entities and hand it the presses (before `run`)."""
        self.commands = commands
        self.actions = dict(commands.actions())

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self.commands is not None and not self._stopping:
            self.commands.on_message(msg.topic, bytes(msg.payload), self._publish)

    # -- the sink --------------------------------------------------------------------------
    def offer(self, previous_seq: int, observations: list[Observation]) -> None:
        """Called by the pipeline after every committed batch (on the loop): cheap."""
        per_device: dict[str, list[tuple[str, str]]] = {}
        for obs in observations:
            r = obs.reading
            if r.device_id in self._revoked:
                continue
            if (r.device_id, r.sensor) not in self._units and not self._announce_sensor(
                r.device_id, r.sensor, r.unit
            ):
                continue
            per_device.setdefault(r.device_id, []).append((r.sensor, r.decimal))
        for device, values in per_device.items():
            self.states.offer(device, values)
        if per_device:
            self._schedule()

    # -- what Home Assistant is told -------------------------------------------------------
    def _device_name(self, device: str) -> str:
        return self._names.get(device, device)

    def _announce_sensor(self, device: str, sensor: str, unit: str) -> bool:
        """Announce one entity; False when the device has reached MAX_SENSORS_PER_DEVICE."""
        t = self.topics
        new_device = device not in self._configs
        configs = self._configs.setdefault(device, {})
        if len(configs) >= MAX_SENSORS_PER_DEVICE + len(self.actions.get(device, ())):
            if device not in self._over_limit:
                self._over_limit.add(device)
                event(
                    self.log,
                    "ha_sensor_limit",
                    logging.WARNING,
                    device=device,
                    sensor=sensor,
                    limit=MAX_SENSORS_PER_DEVICE,
                )
            return False
        if new_device:  # its buttons and switches too
            self._announce_actions(device, configs)
        self._units[(device, sensor)] = unit
        doc = sensor_config(t, device, self._device_name(device), sensor, unit, __version__)
        topic = t.config("sensor", device, sensor)
        configs[topic] = encode(doc)
        self._publish_config(topic, configs[topic])
        event(self.log, "ha_entity_announced", device=device, sensor=sensor, unit=unit)
        self._publish(t.gateway_state, encode({"devices": len(self._configs)}))
        return True

    def _announce_actions(self, device: str, configs: dict[str, bytes]) -> None:
        for action in self.actions.get(device, ()):
            topic, doc = action_config(
                self.topics, device, self._device_name(device), action, __version__
            )
            configs[topic] = encode(doc)
            self._publish_config(topic, configs[topic])

    def _publish_config(self, topic: str, payload: bytes) -> None:
        if self._publish(topic, payload):
            self.published_configs += 1

    def _revoke(self, device: str, declared: tuple[tuple[str, str], ...]) -> None:
        t = self.topics
        topics = set(self._configs.pop(device, {}))
        topics |= {t.config("sensor", device, s) for s, _ in declared}
        topics |= {
            t.config(a.kind, device, f"action.{a.name}") for a in self.actions.get(device, ())
        }
        topics.add(t.state(device))
        self._revoked[device] = topics
        self._over_limit.discard(device)
        for key in [k for k in self._units if k[0] == device]:
            del self._units[key]
        self.states.forget(device)
        for topic in sorted(topics):
            self._publish(topic, b"")
        self._publish(t.gateway_state, encode({"devices": len(self._configs)}))
        event(self.log, "ha_device_removed", device=device, entities=len(topics) - 1)

    def _follow_registry(self) -> None:
        """Announce enrolled devices' declared sensors; remove revoked (or deleted) ones."""
        records = self.enrolled()
        view = {d: (str(r.status), r.name, r.sensors) for d, r in records.items()}
        if view == self._registry_view:
            return
        gone = set(self._registry_view) - set(view)
        self._registry_view = view
        for device in sorted(gone):
            if device not in self._revoked:
                self._revoke(device, ())
        for device, (status, name, sensors) in sorted(view.items()):
            if status == REVOKED:
                if device not in self._revoked:
                    self._revoke(device, sensors)
                continue
            self._revoked.pop(device, None)  # enrolled again after a revocation
            renamed = self._names.get(device) not in (None, name)
            self._names[device] = name
            if renamed:  # the device block carries the name: announce its entities again
                for key in [k for k in self._units if k[0] == device]:
                    del self._units[key]
                self._configs.pop(device, None)
            for sensor, unit in sensors:
                if (device, sensor) not in self._units:
                    self._announce_sensor(device, sensor, unit)
            if device not in self._configs and device in self.actions:  # commands, no sensor
                self._announce_actions(device, self._configs.setdefault(device, {}))

    # -- MQTT ------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes) -> bool:
        if not self.conn.connected.is_set():
            return False  # everything is sent again on (re)connection
        info = self.conn.client.publish(topic, payload, qos=1, retain=True)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def _on_connected(self, session_present: bool) -> None:
        t = self.topics
        if self.commands is not None:
            self.conn.client.subscribe(t.commands, 1)
        self._publish(t.gateway_config, encode(gateway_config(t, __version__)))
        for configs in self._configs.values():
            for topic, payload in configs.items():
                self._publish_config(topic, payload)
        for topics in self._revoked.values():
            for topic in sorted(topics):
                self._publish(topic, b"")
        self._publish(t.gateway_state, encode({"devices": len(self._configs)}))
        for device, values in self.states.latest.items():
            self.states.offer(device, list(values.items()))  # resent, still within the rate bound
        self._schedule()
        if self.agent_ready.is_set() and not self._stopping:
            self._set_online()
        self.ready.set()

    def _set_online(self) -> None:
        if self._publish(self.topics.availability, AVAILABLE.encode()):
            if not self._online:
                event(self.log, "ha_available", topic=self.topics.availability)
            self._online = True

    def _schedule(self) -> None:
        if self._timer is not None or self._stopping:
            return
        due = self.states.next_due()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(max(due, loop.time()), self._flush)

    def _flush(self) -> None:
        self._timer = None
        if not self.conn.connected.is_set():
            return  # _on_connected sends the newest values and schedules again
        now = asyncio.get_running_loop().time()
        for device, doc in self.states.take(now):
            if self._publish(self.topics.state(device), doc):
                self.published_states += 1
        self._schedule()

    # -- Component -------------------------------------------------------------------------
    async def run(self) -> None:
        self._stopping = False
        conn_task = asyncio.create_task(self.conn.run())
        try:
            while not conn_task.done():
                self._follow_registry()
                if self.agent_ready.is_set() and not self._online:
                    self._set_online()
                await asyncio.wait({conn_task}, timeout=self.poll_s)
            await conn_task  # raises what ended the connection loop
        finally:
            if not conn_task.done():
                conn_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conn_task

    async def stop(self, grace: float = 1.0) -> None:
        """Say "offline" (a clean disconnect sends no last will) and disconnect."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._publish(self.topics.availability, NOT_AVAILABLE.encode())
        self._online = False
        if self.commands is not None:
            await self.commands.close()
        await self.conn.stop(grace)

    def health(self) -> Health:
        state: State = "up" if self.conn.connected.is_set() else "down"
        if self._stopping:
            state = "stopped"
        elif not self.ready.is_set():
            state = "starting"
        return Health(
            state,
            {
                "url": self.conn.endpoint.url,
                "devices": len(self._configs),
                "entities": sum(len(c) for c in self._configs.values()),
                "configs_published": self.published_configs,
                "states_published": self.published_states,
                "online": self._online,
            },
        )


__all__ = ["EnrolledDevice", "HomeAssistantDiscovery"]
