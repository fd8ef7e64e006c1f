"""A bleak backend over Bumble virtual controllers, for tests: `BleakScanner(backend=...)` and
`BleakClient(backend=...)` drive a Bumble host on a LocalLink, so the agent's BLE source runs
its real bleak calls over real HCI advertising, scanning, connections and GATT.

`VirtualRadio` owns the link: the gateway's adapters (by name, like hci0) and the virtual
peripherals (a BTHome advertiser, a GATT peripheral notifying device frames).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from agent.devices.ble import BleBackend

BTHOME_UUID = UUID.from_16_bits(0xFCD2)
FRAME_SERVICE = UUID("6e400001-b5a3-f393-e0a9-e50e24dcca9e")
FRAME_CHARACTERISTIC = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
# Commands (docs/downlink.md, "Over BLE"): the agent writes to the first and the device answers
# by notification on the second ([sources.ble] command_/answer_characteristic defaults).
COMMAND_CHARACTERISTIC = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
ANSWER_CHARACTERISTIC = FRAME_CHARACTERISTIC


def uuid_str(u: UUID) -> str:
    """Bumble UUID -> bleak's lower-case 128-bit string."""
    return str(uuid.UUID(bytes=u.to_bytes(force_128=True)[::-1]))


def address_str(a: Address) -> str:
    return a.to_string(with_type_qualifier=False).upper()


class VirtualRadio:
    """Bumble controllers on one LocalLink, and bleak backend classes bound to it."""

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self.adapters: dict[str, Device] = {}
        self.controllers: dict[str, Controller] = {}
        self.scanner_starts = 0
        # False: like BlueZ without its experimental advertisement monitor, passive is refused.
        self.passive_supported = True
        self._wedged: set[int] = set()  # ids of scanner backends that stopped hearing

    def _device(self, name: str, address: str) -> Device:
        controller = Controller(name, link=self.link, public_address=address)
        self._last_controller = controller
        device = Device(address=Address(address), host=Host(controller, AsyncPipeSink(controller)))
        # Peripherals advertise on a static random address equal to their configured MAC.
        device.random_address = Address(address)
        return device

    async def add_adapter(self, name: str, address: str) -> Device:
        device = self._device(name, address)
        await device.power_on()
        self.adapters[name] = device
        self.controllers[name] = self._last_controller
        return device

    def adapter(self, name: str | None) -> Device:
        try:
            return self.adapters[name or "hci0"]
        except KeyError:
            raise BleakError(f"adapter {name!r} not found") from None

    def wedge_scanners(self) -> None:
        """Fake radio fault (cannot be produced otherwise): every running scanner stops
        delivering adverts without an error, as a hung adapter does. A scanner started
        afterwards works again."""
        self._wedged.update(self._running)

    _running: ClassVar[set[int]] = set()

    def backend(self) -> BleBackend:
        radio = self

        class Scanner(BumbleScanner):
            pass

        class Client(BumbleClient):
            pass

        Scanner.radio = radio
        Client.radio = radio
        return BleBackend(scanner=Scanner, client=Client)


class BumbleScanner(BaseBleakScanner):
    radio: ClassVar[VirtualRadio]

    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._active = scanning_mode == "active"
        self._adapter_name: str | None = kwargs.get("adapter")
        self._device: Device | None = None

    async def start(self) -> None:
        device = self.radio.adapter(self._adapter_name)
        if not self._active and not self.radio.passive_supported:
            raise BleakError("passive scanning is not supported by this adapter")
        self.seen_devices = {}
        device.on(device.EVENT_ADVERTISEMENT, self._on_advertisement)
        await device.start_scanning(active=self._active, filter_duplicates=False)
        self._device = device
        self.radio._running.add(id(self))
        self.radio.scanner_starts += 1

    async def stop(self) -> None:
        self.radio._running.discard(id(self))
        device, self._device = self._device, None
        if device is not None:
            device.remove_listener(device.EVENT_ADVERTISEMENT, self._on_advertisement)
            await device.stop_scanning()

    def _on_advertisement(self, adv: Advertisement) -> None:
        if id(self) in self.radio._wedged:
            return
        data = adv.data
        service_data: dict[str, bytes] = {}
        for raw in data.get_all(AdvertisingData.SERVICE_DATA_16_BIT_UUID, raw=True):
            service_data[uuid_str(UUID.from_bytes(raw[:2]))] = raw[2:]
        uuids = [
            uuid_str(u)
            for u in data.get(AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS) or []
        ]
        if not self.is_allowed_uuid(uuids):
            return
        name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
        address = address_str(adv.address)
        ad = AdvertisementData(
            local_name=name if isinstance(name, str) else None,
            manufacturer_data={},
            service_data=service_data,
            service_uuids=uuids,
            tx_power=None,
            rssi=adv.rssi,
            platform_data=(adv,),
        )
        device = self.create_or_update_device(address, address, ad.local_name, adv, ad)
        self.call_detection_callbacks(device, ad)


class BumbleClient(BaseBleakClient):
    radio: ClassVar[VirtualRadio]

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, **kwargs)
        self._adapter_name: str | None = kwargs.get("adapter")
        self._connection: Connection | None = None
        self._peer: Peer | None = None

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        device = self.radio.adapter(self._adapter_name)
        try:
            connection = await device.connect(Address(self.address), timeout=self._timeout)
        except Exception as exc:  # Bumble's timeout / connection errors, as BlueZ's would be
            # Bumble's virtual controller acknowledges LE Create Connection Cancel but keeps the
            # attempt pending (a real controller ends it), which would refuse every later
            # attempt; end it here as a real controller would.
            self.radio.controllers[self._adapter_name or "hci0"].pending_le_connection = None
            raise BleakDeviceNotFoundError(self.address, f"cannot connect: {exc!r}") from exc
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        peer = Peer(connection)
        await peer.discover_all()  # type: ignore[no-untyped-call]
        self._peer = peer
        self.services = self._collect(peer)

    def _on_disconnection(self, reason: int) -> None:
        self._connection = None
        self._peer = None
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _collect(self, peer: Peer) -> BleakGATTServiceCollection:
        services = BleakGATTServiceCollection()
        for s in peer.services:
            service = BleakGATTService(s, s.handle, uuid_str(s.uuid))
            services.add_service(service)
            for c in s.characteristics:
                props: list[Any] = [
                    str(p.name).lower().replace("_", "-")
                    for p in Characteristic.Properties
                    if p in c.properties
                ]
                char = BleakGATTCharacteristic(
                    c, c.handle, uuid_str(c.uuid), props, lambda: 20, service
                )
                services.add_characteristic(char)
        return services

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            await connection.disconnect()

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        if self._peer is None:
            raise BleakError("not connected")
        await self._peer.subscribe(characteristic.obj, lambda value: callback(bytearray(value)))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        if self._peer is not None:
            await self._peer.unsubscribe(characteristic.obj)

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, **kwargs: Any
    ) -> bytearray:
        if self._peer is None:
            raise BleakError("not connected")
        return bytearray(await self._peer.read_value(characteristic.obj))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        if self._peer is None:
            raise BleakError("not connected")
        await self._peer.write_value(characteristic.obj, bytes(data), response)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the agent does not pair over GATT")

    async def unpair(self) -> None:
        raise NotImplementedError("the agent does not pair over GATT")

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, **kwargs: Any
    ) -> bytearray:
        raise NotImplementedError("the agent reads no descriptors")

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise NotImplementedError("the agent writes no descriptors")


class BTHomeSensor:
    """A virtual BTHome v2 advertiser: `advertise(service_data)` replaces what it sends."""

    def __init__(self, radio: VirtualRadio, address: str) -> None:
        self.radio = radio
        self.address = address
        self.device = radio._device(f"sensor-{address}", address)

    async def power_on(self) -> None:
        await self.device.power_on()

    async def advertise(self, service_data: bytes, interval_ms: float = 20.0) -> None:
        payload = bytes(
            AdvertisingData(
                [
                    (AdvertisingData.FLAGS, bytes([0x06])),
                    (AdvertisingData.SERVICE_DATA_16_BIT_UUID, b"\xd2\xfc" + service_data),
                ]
            )
        )
        if self.device.is_advertising:
            await self.device.stop_advertising()
        await self.device.start_advertising(
            advertising_data=payload,
            advertising_interval_min=interval_ms,
            advertising_interval_max=interval_ms,
        )

    async def stop(self) -> None:
        if self.device.is_advertising:
            await self.device.stop_advertising()


class FramePeripheral:
    """A virtual GATT peripheral that notifies newline-terminated device frames on a notify
    characteristic, split to the 20 bytes an ATT MTU of 23 allows."""

    def __init__(self, radio: VirtualRadio, address: str) -> None:
        self.radio = radio
        self.address = address
        self.device = radio._device(f"peripheral-{address}", address)
        self.characteristic = Characteristic(
            FRAME_CHARACTERISTIC,
            Characteristic.Properties.NOTIFY | Characteristic.Properties.READ,
            Characteristic.READABLE,
            b"",
        )
        self.device.add_service(Service(FRAME_SERVICE, [self.characteristic]))
        self.subscribed = asyncio.Event()
        self.connections: list[Connection] = []
        self.device.on(self.device.EVENT_CONNECTION, self._on_connection)
        self.characteristic.on("subscription", self._on_subscription)

    def _on_connection(self, connection: Connection) -> None:
        self.connections.append(connection)

        def gone(reason: int) -> None:
            self.subscribed.clear()
            if connection in self.connections:
                self.connections.remove(connection)

        connection.on(connection.EVENT_DISCONNECTION, gone)

    def _on_subscription(self, connection: Connection, notify: bool, indicate: bool) -> None:
        if notify:
            self.subscribed.set()

    async def appear(self) -> None:
        if not self.device.powered_on:
            await self.device.power_on()
        await self.device.start_advertising(
            advertising_interval_min=20.0, advertising_interval_max=20.0
        )

    async def disappear(self) -> None:
        """Out of range: stop advertising and drop every connection."""
        if self.device.is_advertising:
            await self.device.stop_advertising()
        for c in list(self.connections):
            await c.disconnect()

    async def send(self, frame: bytes) -> None:
        data = frame + b"\n"
        for i in range(0, len(data), 20):
            await self.device.notify_subscribers(self.characteristic, data[i : i + 20])


class CommandPeripheral:
    """A virtual BLE device that takes commands by GATT write and answers by notification.
    Writes are reassembled up to a newline and each line is handed to `handle` (the device's
    command handler: bytes -> the answer, or None for what it does not answer); answers go out
    newline-terminated, split to 20 bytes. With `answers=False` it has no answer
    characteristic, like a BTHome-only sensor. It advertises again after every disconnection
    while it is `present`."""

    def __init__(
        self,
        radio: VirtualRadio,
        address: str,
        handle: Callable[[bytes], bytes | None],
        *,
        answers: bool = True,
    ) -> None:
        self.address = address
        self.handle = handle
        self.device = radio._device(f"commanded-{address}", address)
        self.lines: list[bytes] = []  # every complete line written to it
        self.present = False
        self._buffer = bytearray()
        self.command: Characteristic[bytes] = Characteristic(
            COMMAND_CHARACTERISTIC,
            Characteristic.Properties.WRITE,
            Characteristic.WRITEABLE,
            CharacteristicValue(write=self._on_write),
        )
        self.answer = (
            Characteristic(
                ANSWER_CHARACTERISTIC,
                Characteristic.Properties.NOTIFY | Characteristic.Properties.READ,
                Characteristic.READABLE,
                b"",
            )
            if answers
            else None
        )
        chars = [self.command] if self.answer is None else [self.command, self.answer]
        self.device.add_service(Service(FRAME_SERVICE, chars))
        self.connections: list[Connection] = []
        self.device.on(self.device.EVENT_CONNECTION, self._on_connection)

    def _on_connection(self, connection: Connection) -> None:
        self.connections.append(connection)

        def gone(reason: int) -> None:
            if connection in self.connections:
                self.connections.remove(connection)
            if self.present:
                asyncio.get_running_loop().create_task(self._advertise())

        connection.on(connection.EVENT_DISCONNECTION, gone)

    async def _advertise(self) -> None:
        if self.present and not self.device.is_advertising:
            await self.device.start_advertising(
                advertising_interval_min=20.0, advertising_interval_max=20.0
            )

    async def appear(self) -> None:
        if not self.device.powered_on:
            await self.device.power_on()
        self.present = True
        await self._advertise()

    async def disappear(self) -> None:
        """Out of range: stop advertising and drop every connection."""
        self.present = False
        if self.device.is_advertising:
            await self.device.stop_advertising()
        for c in list(self.connections):
            await c.disconnect()

    def _on_write(self, connection: Connection, value: bytes) -> None:
        self._buffer += value
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self.lines.append(line)
            answer = self.handle(line)
            if answer is not None and self.answer is not None:
                asyncio.get_running_loop().create_task(self._notify(answer + b"\n"))

    async def _notify(self, data: bytes) -> None:
        assert self.answer is not None
        for i in range(0, len(data), 20):
            await self.device.notify_subscribers(self.answer, data[i : i + 20])


__all__ = [
    "ANSWER_CHARACTERISTIC",
    "BTHOME_UUID",
    "COMMAND_CHARACTERISTIC",
    "FRAME_CHARACTERISTIC",
    "BTHomeSensor",
    "BumbleClient",
    "BumbleScanner",
    "CommandPeripheral",
    "FramePeripheral",
    "VirtualRadio",
]
