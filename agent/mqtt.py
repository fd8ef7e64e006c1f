"""paho-mqtt driven by the asyncio event loop: socket callbacks instead of paho's own thread.

`MqttConnection` owns one paho Client, connects in a worker thread (DNS, TCP and TLS may
block), then reads and writes from the event loop. It reconnects with exponential backoff and
full jitter until stopped, and calls `on_connected` after every (re)connection so that users
re-subscribe and re-announce themselves there. Given `fallbacks`, a failed or lost connection
moves on to the next broker, and while on a fallback the first is tried every `failback_check`
seconds and returned to once it accepts connections; paho re-sends its unacknowledged QoS 1
messages, in order, to whichever broker comes next (at least once, order kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config import BrokerEndpoint
from agent.logs import event
from agent.secrets import check_secret_mode


def read_secret_file(path: Any) -> str:
    """The first line of a secret file (password files are secrets: 0600 like keys)."""
    check_secret_mode(path)
    return str(open(path, encoding="utf-8").readline().rstrip("\r\n"))


class BufferedClient(paho.Client):
    """paho reads each packet's fixed header one byte per recv() system call; this client
    reads up to 64 KiB per call and serves paho's small reads from that buffer. The owner must
    keep calling loop_read() while `buffered` is true: epoll cannot see bytes already read."""

    _rbuf: bytes = b""
    _rpos: int = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(65536)  # raises BlockingIOError when nothing is there
            if not data:
                return data
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        chunk = self._rbuf[self._rpos : end]
        self._rpos = min(end, len(self._rbuf))
        return chunk

    # Whether a per-topic callback was registered (message_callback_add). Without one, paho
    # still matches every incoming topic against its (empty) filter tree and decodes the topic
    # twice for it: about 4 % of the agent's CPU at maximum intake (py-spy, bench.ingest).
    _filtered_callbacks = False

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered_callbacks = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if self._filtered_callbacks or on_message is None:
            super()._handle_on_message(message)
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:  # as paho's own: logged, raised unless suppressed
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    # An MQTT 3.1.1 PUBACK holds a packet id and nothing else, yet paho builds a ReasonCode and
    # a Properties object for each: 12 % of the agent's CPU at 1,000 readings/s (py-spy). They
    # carry nothing there, so one shared (read-only) pair goes with every such PUBACK.
    _PUBACK_OK = (ReasonCode(PacketTypes.PUBACK), Properties(PacketTypes.PUBACK))  # type: ignore[no-untyped-call]

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol == paho.MQTTv5 or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)  # MQTT 5, PUBCOMP, or malformed
        mid = int.from_bytes(packet)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, *self._PUBACK_OK)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _update_inflight(self) -> MQTTErrorCode:
        # After every PUBACK paho scans all unacknowledged messages for one queued beyond
        # max_inflight. The bridge never hands paho more than its window, so usually none is:
        # 14 % of the agent's CPU draining a backlog one envelope per message (py-spy). With no
        # message outside the in-flight count there is nothing to find.
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()

    def discard_buffer(self) -> None:
        self._rbuf, self._rpos = b"", 0

    @property
    def buffered(self) -> bool:
        if self._rpos < len(self._rbuf):
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


class MqttConnection:
    """One broker connection. Call `await run()` in a task; `stop()` ends it."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        *,
        client_id: str | None = None,
        clean_start: bool,
        name: str,
        manual_ack: bool = False,
        will: tuple[str, bytes] | None = None,
        max_inflight: int = 20,
        session_expiry: int = 7 * 86400,
        logger: logging.Logger | None = None,
        backoff: tuple[float, float] = (0.25, 30.0),  # (initial, maximum) reconnect delay, s
        nodelay: bool = False,
        fallbacks: tuple[BrokerEndpoint, ...] = (),
        failback_check: float = 30.0,
    ) -> None:
        self.endpoint = endpoint  # the broker in use (or being tried)
        self.endpoints = (endpoint, *fallbacks)
        self._index = 0
        self._failback_check = failback_check
        self._failing_back = False
        self._nodelay = nodelay  # TCP_NODELAY, for request/response links
        self.name = name
        self.log = logger or logging.getLogger(f"agent.mqtt.{name}")
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        # Full jitter (a delay d sleeps uniformly in [0, d]): fleets don't reconnect in step.
        # A session that came up resets it explicitly, never by the clock.
        self._backoff = Backoff(backoff[0], backoff[1], jitter=1.0, reset_after=math.inf)
        v5 = endpoint.protocol == 5
        protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        client_id = (
            client_id or endpoint.client_id or f"edgence-{name}-{random.getrandbits(32):08x}"
        )
        self.client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else clean_start,
            protocol=protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        self.client.connect_timeout = 5.0
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        if endpoint.username is not None:
            password = read_secret_file(endpoint.password_file) if endpoint.password_file else None
            self.client.username_pw_set(endpoint.username, password)
        if endpoint.tls:
            if endpoint.key_file is not None:
                check_secret_mode(endpoint.key_file)
            self.client.tls_set(
                ca_certs=str(endpoint.ca_file) if endpoint.ca_file else None,
                certfile=str(endpoint.cert_file) if endpoint.cert_file else None,
                keyfile=str(endpoint.key_file) if endpoint.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self.connected = asyncio.Event()
        self.on_connected: Callable[[bool], None] = lambda session_present: None
        self.on_disconnected: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stopping = False
        self._established = False
        self._attempt_reported = False
        self._paused = False
        self._lost = asyncio.Event()
        self._sock: socket.socket | None = None
        c = self.client
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect

    # -- socket plumbing: paho tells us about its socket, the loop watches it ---------------
    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        if self._nodelay:
            # paho leaves Nagle on: a reply published right after the PUBACK of its request
            # would wait for the broker's delayed ACK of that PUBACK (~40 ms on Linux).
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.discard_buffer()
        self._in_loop(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0 and not self._paused:
            self._loop.add_reader(sock, self._read)

    def _read(self) -> None:
        client = self.client
        for _ in range(256):  # bounded: one busy link must not starve the rest of the loop
            if client.loop_read() != paho.MQTT_ERR_SUCCESS or not client.buffered:
                return
            if self._paused:
                return
        if self._loop is not None:
            self._loop.call_soon(self._read)

    def _write(self) -> None:
        self.client.loop_write()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_fd, sock.fileno())

    def _remove_fd(self, fd: int) -> None:
        assert self._loop is not None
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.add_writer(sock, self._write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.remove_writer(sock)

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure: the broker holds what we have not read)."""
        self._paused = True
        if self._sock is not None and self._loop is not None and self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        self._paused = False
        if self._sock is not None and self._loop is not None and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock, self._read)
            if self.client.buffered:
                self._loop.call_soon(self._read)

    # -- protocol events -----------------------------------------------------------------
    def _report(self, name: str, level: int = logging.INFO, **fields: Any) -> None:
        event(self.log, name, level, link=self.name, broker=self.endpoint.url, **fields)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._attempt_reported = True
        if rc.is_failure:
            self._report("mqtt_refused", logging.WARNING, reason=str(rc))
            self._lost.set()
            return
        self._report("mqtt_connected", session_present=bool(flags.session_present))
        self._established = True
        self.connected.set()
        self.on_connected(bool(flags.session_present))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self._lost.set()
        if not was and not self._stopping and not self._attempt_reported:
            # Closed before any CONNACK (e.g. a TLS broker that wants a client certificate):
            # without this line the only explanation would be in the broker's log.
            self._attempt_reported = True
            self._report(
                "mqtt_connect_failed",
                logging.WARNING,
                error=f"connection closed before CONNACK ({rc})",
            )
        if was and not self._stopping:
            self._report("mqtt_disconnected", logging.WARNING, reason=str(rc))
            self.on_disconnected()

    # -- lifecycle ------------------------------------------------------------------------
    def _connect_blocking(self) -> None:
        ep = self.endpoint
        if ep.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0 if self._clean_start else self._session_expiry
            self.client.connect(
                ep.host, ep.port, ep.keepalive, clean_start=self._clean_start, properties=props
            )
        else:
            self.client.connect(ep.host, ep.port, ep.keepalive)

    async def run(self) -> None:
        """Connect, keep connected, reconnect with backoff and jitter; returns after stop()."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._backoff.succeeded()  # a new run starts from the shortest delay
        misc = asyncio.create_task(self._misc())
        failback = asyncio.create_task(self._failback()) if len(self.endpoints) > 1 else None
        try:
            while not self._stopping:
                self._lost.clear()
                self._attempt_reported = False
                self.endpoint = self.endpoints[self._index]
                try:
                    await self._loop.run_in_executor(None, self._connect_blocking)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    if self._stopping:
                        break
                    if self._next_endpoint():
                        # Another broker to try: at once, the backoff is for a whole round.
                        self._report("mqtt_connect_failed", logging.WARNING, error=str(exc)[:300])
                        continue
                    wait = self._backoff.next_delay()
                    self._report(
                        "mqtt_connect_failed",
                        logging.WARNING,
                        error=str(exc)[:300],
                        retry_in=f"{wait:.2f}s",
                    )
                    await asyncio.sleep(wait)
                    continue
                await self._lost.wait()
                self.connected.clear()
                if self._established:
                    self._backoff.succeeded()  # a session that came up resets the backoff
                    self._established = False
                if self._failing_back:
                    self._failing_back = False
                    self._index = 0
                    continue
                if not self._next_endpoint() and not self._stopping:
                    await self._backoff.wait()
        finally:
            misc.cancel()
            if failback is not None:
                failback.cancel()

    def _next_endpoint(self) -> bool:
        """Move to the next broker; False when that starts a new round (back at the first)."""
        if len(self.endpoints) == 1:
            return False
        self._index = (self._index + 1) % len(self.endpoints)
        return self._index != 0

    async def _failback(self) -> None:
        """While connected to a fallback: try the first broker's port now and then, and go back
        to it when it accepts a connection."""
        first = self.endpoints[0]
        while True:
            await asyncio.sleep(self._failback_check)
            if self._index == 0 or not self.connected.is_set() or self._stopping:
                continue
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(first.host, first.port), 5.0
                )
            except (OSError, TimeoutError):
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if self._index == 0 or not self.connected.is_set() or self._stopping:
                continue
            self._report("mqtt_failback", to=first.url)
            self._failing_back = True
            self.client.disconnect()

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                rc = self.client.loop_misc()  # keepalive pings, timeouts
                if rc == paho.MQTT_ERR_NO_CONN and not self._lost.is_set():
                    self._lost.set()

    async def stop(self, grace: float = 1.0) -> None:
        """Disconnect cleanly, waiting up to `grace` seconds for the DISCONNECT to go out."""
        if self._stopping:
            return
        self._stopping = True
        if self.connected.is_set():
            self._lost.clear()
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), grace)
        self._lost.set()
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(OSError, ValueError):
                self._remove_fd(self._sock.fileno())
