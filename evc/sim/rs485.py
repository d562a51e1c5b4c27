"""A simulated RS485 bus: Modbus RTU devices behind one serial line, reachable as a pty and as a TCP tunnel.

The bus is what EVC's `conn/rs485` sees on the far side of a USB adapter (`local`, a tty) or of ser2net
(`remote`, raw serial bytes over TCP). Every master attached to it (the pty, each tunnel connection, an
in-memory `BusPort`) has its own receive buffer, because bytes from two masters never merge into one frame
here; the wire timing (`baud`) is shared, as on one pair of wires.

A device is any object with `unit` (1..247) and `handle(request_pdu)`, the contract of
`evc.sim.modbus.SimDevice`: it answers a pymodbus `ModbusPDU`, None (stays silent), raw PDU bytes (function
code + data, framed here) or `Garbage(bytes)` (sent unframed in place of a reply).

Framing follows a real slave: a request whose length the function code gives is taken as soon as it is
complete; a frame with a bad CRC is dropped without a reply, along with everything buffered with it; bytes
that cannot start a known request are dropped after `frame_timeout_s` of silence. Unit 0 is a broadcast:
every device handles it and none replies.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import termios
import tty
from collections.abc import Callable, Iterable

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from evc.sim.modbus import Garbage

log = Logger()

ILLEGAL_FUNCTION = 0x01

# The Modbus serial-line spec fixes t3.5 at 1.75 ms above 19200 baud, where 3.5 characters get too short for
# UARTs to time reliably.
_FIXED_T35_ABOVE_BAUD = 19200
_FIXED_T35_S = 0.00175

_TERMIOS_BAUD = {
    1200: termios.B1200, 2400: termios.B2400, 4800: termios.B4800, 9600: termios.B9600,
    19200: termios.B19200, 38400: termios.B38400, 57600: termios.B57600, 115200: termios.B115200,
}


def crc16(frame: bytes) -> bytes:
    """The Modbus RTU CRC of `frame`, as the two bytes that follow it on the wire."""
    return FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """An RTU frame: unit address, PDU bytes (function code + data), CRC."""
    frame = bytes([unit]) + pdu
    return frame + crc16(frame)


def crc_ok(frame: bytes) -> bool:
    """Whether the last two bytes of `frame` are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == frame[-2:]


class WireTiming:
    """Character time and t3.5 for a serial line setting (8 data bits, optional parity, 1 or 2 stop bits)."""

    def __init__(self, baud: int, parity: str = "N", stopbits: int = 1):
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, not {parity!r}")
        self.baud = baud
        self.bits_per_char = 1 + 8 + (0 if parity == "N" else 1) + stopbits
        self.char_s = self.bits_per_char / baud
        self.t35_s = _FIXED_T35_S if baud > _FIXED_T35_ABOVE_BAUD else 3.5 * self.char_s

    def bytes_s(self, n: int) -> float:
        """Time `n` characters take on the wire."""
        return n * self.char_s

    def transaction_s(self, request_bytes: int, reply_bytes: int) -> float:
        """Least bus time for one request and its reply, both end-of-frame gaps included."""
        return self.bytes_s(request_bytes + reply_bytes) + 2 * self.t35_s


class BusPort:
    """One master's attachment to the bus: it feeds bytes in, and the bus writes replies back through `write`.

    The pty, every tunnel connection and in-memory test harnesses are BusPorts.
    """

    def __init__(self, bus: "SimRs485Bus", write: Callable[[bytes], None], name: str):
        self._bus = bus
        self._write = write
        self.name = name
        self.buf = b""
        self.first_byte_at: float | None = None
        self.silence_call = None
        self.attached = True

    def feed(self, data: bytes) -> None:
        """Bytes the master put on the line."""
        self._bus._received(self, data)

    def write(self, data: bytes) -> None:
        if self.attached:
            self._write(data)

    def detach(self) -> None:
        """Stop delivering to this master and forget what it had half sent."""
        self.attached = False
        self._bus._detach(self)


def raw_pty() -> tuple[int, int]:
    """A new pty (master, slave): the slave in raw mode, so no byte is echoed, translated or held back for a newline;
    the master non-blocking, for the reactor."""
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    os.set_blocking(master, False)
    return master, slave


def point_link(link_path: str, target: str) -> None:
    """Make `link_path` a symlink to `target`, replaced atomically: a stable name like udev's /dev/rs485-1."""
    tmp = f"{link_path}.new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link_path)


@implementer(IReadDescriptor)
class PtyReader:
    """Reads what EVC writes to a pty slave, from the master side, and hands it to `deliver` (the simulated bus or
    device behind that pty; evc.sim.serial_line uses it too)."""

    def __init__(self, name: str, master_fd: int, deliver):
        self._name = name
        self._fd = master_fd
        self._deliver = deliver

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return f"pty {self._name}"

    def doRead(self):
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError as e:
            # EIO means no slave is open; we hold one ourselves, so this is a closed pty: nothing to read.
            if e.errno == errno.EIO:
                return None
            raise
        if data:
            self._deliver(data)
        return None

    def connectionLost(self, reason):
        pass


class _TunnelProtocol(Protocol):
    """One TCP client of the tunnel: raw serial bytes both ways, as ser2net serves them."""

    def __init__(self, bus: "SimRs485Bus"):
        self._bus = bus
        self.port: BusPort | None = None

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.port = self._bus.attach(self.transport.write, name=f"tcp {peer.host}:{peer.port}")
        self._bus._tunnels.add(self)
        log.info("{bus}: tunnel client {peer} connected", bus=self._bus.name, peer=f"{peer.host}:{peer.port}")

    def dataReceived(self, data):
        self.port.feed(data)

    def connectionLost(self, reason):
        self._bus._tunnels.discard(self)
        if self.port is not None:
            self.port.detach()


class SimRs485Bus:
    """Modbus RTU devices on one simulated serial line.

    `reactor` provides time (`callLater`, `seconds`) and, for the pty and the tunnel, `addReader`/`listenTCP`;
    tests that only feed bytes through `attach()` may pass a `task.Clock`.

    `baud=None` answers at once; with a baud rate every frame takes its wire time (`bits_per_char` per
    byte) and each frame end a t3.5 gap, the request's included, so a reply arrives no earlier than the real
    bus could deliver it. `turnaround_s` adds the device's own processing time.
    """

    def __init__(self, reactor, devices: Iterable = (), *, name: str = "rs485", baud: int | None = None,
                 parity: str = "N", stopbits: int = 1, turnaround_s: float = 0.0,
                 frame_timeout_s: float | None = None):
        self._reactor = reactor
        self.name = name
        self.timing = WireTiming(baud, parity, stopbits) if baud else None
        self.turnaround_s = turnaround_s
        if frame_timeout_s is None:
            frame_timeout_s = self.timing.t35_s if self.timing else 0.02
        self.frame_timeout_s = frame_timeout_s
        self._devices: dict[int, object] = {}
        self._muted: set[int] = set()
        self._decoder = DecodePDU(is_server=True)
        self._line_free_at = 0.0
        self._ports: set[BusPort] = set()
        self._pending: set = set()
        # Fault injection: how many coming replies get a wrong CRC.
        self._corrupt_replies = 0
        # Counters a test or a benchmark can read.
        self.stats = {"requests": 0, "replies": 0, "crc_errors": 0, "garbage_bytes": 0, "unanswered": 0}
        # pty state
        self._pty_master: int | None = None
        self._pty_slave: int | None = None
        self._pty_reader: PtyReader | None = None
        self._pty_port: BusPort | None = None
        self._tty_link: str | None = None
        self._own_tmpdir: str | None = None
        self.pty_slave_path: str | None = None
        # tunnel state
        self._listening = None
        self._tunnels: set[_TunnelProtocol] = set()
        for device in devices:
            self.add(device)

    # -- devices ---------------------------------------------------------------------------------------

    def add(self, device) -> None:
        """Put a device on the bus at its `unit` address."""
        if not 1 <= device.unit <= 247:
            raise ValueError(f"unit address {device.unit} is outside 1..247")
        if device.unit in self._devices:
            raise ValueError(f"unit {device.unit} is already on bus {self.name}")
        self._devices[device.unit] = device

    def remove(self, unit: int) -> None:
        """Take the device at `unit` off the bus (it stops answering, as if its cable were cut)."""
        self._devices.pop(unit, None)

    @property
    def devices(self) -> dict[int, object]:
        return dict(self._devices)

    def mute(self, unit: int, muted: bool = True) -> None:
        """Make a device stay silent (dead or unpowered) while keeping it on the bus."""
        if muted:
            self._muted.add(unit)
        else:
            self._muted.discard(unit)

    # -- masters ---------------------------------------------------------------------------------------

    def attach(self, write: Callable[[bytes], None], name: str = "memory") -> BusPort:
        """Attach a master whose replies go to `write`; feed its requests with `port.feed(data)`."""
        port = BusPort(self, write, name)
        self._ports.add(port)
        return port

    def _detach(self, port: BusPort) -> None:
        self._ports.discard(port)
        if port.silence_call is not None and port.silence_call.active():
            port.silence_call.cancel()
        port.silence_call = None
        port.buf = b""

    # -- pty -------------------------------------------------------------------------------------------

    def open_pty(self, link_path: str | None = None) -> str:
        """Open a pty whose slave EVC uses as a tty; returns `tty_path`, a symlink that stays stable across
        `vanish()`/`reappear()` (like a udev name such as /dev/rs485-1).
        """
        if self._pty_master is not None:
            raise RuntimeError(f"bus {self.name} already has a pty at {self._tty_link}")
        if link_path is None:
            if self._tty_link is None:
                self._own_tmpdir = tempfile.mkdtemp(prefix="evc-rs485-")
                link_path = os.path.join(self._own_tmpdir, self.name)
            else:
                link_path = self._tty_link
        master, slave = raw_pty()
        if self.timing and self.timing.baud in _TERMIOS_BAUD:
            attrs = termios.tcgetattr(slave)
            attrs[4] = attrs[5] = _TERMIOS_BAUD[self.timing.baud]
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self._pty_master, self._pty_slave = master, slave
        self.pty_slave_path = os.ttyname(slave)
        self._pty_port = self.attach(self._pty_write, name="pty")
        self._pty_reader = PtyReader(self.name, master, lambda data: self._pty_port.feed(data))
        self._reactor.addReader(self._pty_reader)
        point_link(link_path, self.pty_slave_path)
        self._tty_link = link_path
        log.info("{bus}: pty {tty_path} -> {slave}", bus=self.name, tty_path=link_path, slave=self.pty_slave_path)
        return link_path

    @property
    def tty_path(self) -> str | None:
        """The stable path EVC opens (a symlink to the current pty slave); None before `open_pty()`."""
        return self._tty_link

    def _pty_write(self, data: bytes) -> None:
        if self._pty_master is None:
            return
        try:
            os.write(self._pty_master, data)
        except BlockingIOError:
            # A real line does not buffer for a master that is not listening either.
            log.warn("{bus}: pty full, {n} bytes lost", bus=self.name, n=len(data))

    def vanish(self) -> None:
        """The USB adapter is unplugged: the pty closes (EVC's reads fail) and `tty_path` disappears."""
        if self._pty_master is None:
            return
        self._reactor.removeReader(self._pty_reader)
        self._pty_port.detach()
        os.close(self._pty_master)
        os.close(self._pty_slave)
        self._pty_master = self._pty_slave = None
        self._pty_reader = self._pty_port = None
        self.pty_slave_path = None
        if self._tty_link and os.path.lexists(self._tty_link):
            os.unlink(self._tty_link)
        log.info("{bus}: pty vanished", bus=self.name)

    def reappear(self) -> str:
        """The adapter is plugged back in: a new pty behind the same `tty_path`."""
        return self.open_pty(self._tty_link)

    # -- TCP tunnel ------------------------------------------------------------------------------------

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        """Serve the line as raw bytes over TCP (as ser2net does); returns the port number."""
        if self._listening is not None:
            raise RuntimeError(f"bus {self.name} already listens on {self.tcp_port}")
        factory = Factory.forProtocol(lambda: _TunnelProtocol(self))
        factory.noisy = False
        self._listening = self._reactor.listenTCP(port, factory, interface=interface)
        log.info("{bus}: tunnel on {interface}:{port}", bus=self.name, interface=interface, port=self.tcp_port)
        return self.tcp_port

    @property
    def tcp_port(self) -> int | None:
        return self._listening.getHost().port if self._listening is not None else None

    def drop_tunnel(self) -> None:
        """Cut every tunnel connection at once (ser2net restarted, network gone); the listener stays."""
        for proto in list(self._tunnels):
            proto.transport.abortConnection()

    def stop_listening(self) -> defer.Deferred:
        """Stop accepting tunnel connections and cut the open ones."""
        self.drop_tunnel()
        if self._listening is None:
            return defer.succeed(None)
        listening, self._listening = self._listening, None
        return defer.maybeDeferred(listening.stopListening)

    # -- fault injection -------------------------------------------------------------------------------

    def inject_garbage(self, data: bytes = b"\x00\xff\x55\xaa") -> None:
        """Line noise: `data` reaches every attached master now, as if the wire had picked it up."""
        for port in list(self._ports):
            port.write(data)

    def corrupt_replies(self, count: int = 1) -> None:
        """The next `count` replies reach the master with a wrong CRC."""
        self._corrupt_replies += count

    # -- the line --------------------------------------------------------------------------------------

    def _received(self, port: BusPort, data: bytes) -> None:
        if not data or not port.attached:
            return
        if not port.buf:
            port.first_byte_at = self._reactor.seconds()
        port.buf += data
        if port.silence_call is not None and port.silence_call.active():
            port.silence_call.cancel()
        self._parse(port)
        if port.buf:
            port.silence_call = self._reactor.callLater(self.frame_timeout_s, self._silence, port)

    def _request_size(self, buf: bytes) -> int | None:
        """Length of the request at the start of `buf`: 0 = need more bytes, None = not a known request."""
        if len(buf) < 2:
            return 0
        if buf[1] & 0x80:
            return None
        pdu_class = self._decoder.lookupPduClass(buf)
        if pdu_class is None:
            return None
        try:
            return pdu_class.calculateRtuFrameSize(buf)
        except Exception:  # pymodbus raises NotImplementedException for PDUs it cannot size
            return None

    def _parse(self, port: BusPort) -> None:
        while port.buf:
            size = self._request_size(port.buf)
            if not size or len(port.buf) < size:
                return
            frame, rest = port.buf[:size], port.buf[size:]
            if not crc_ok(frame):
                # A slave cannot tell where a corrupted frame ends, so it drops the whole burst.
                self.stats["crc_errors"] += 1
                log.debug("{bus}: bad CRC in {frame}, no reply", bus=self.name, frame=port.buf.hex())
                port.buf = b""
                return
            port.buf = rest
            self._dispatch(port, frame)
            port.first_byte_at = self._reactor.seconds()

    def _silence(self, port: BusPort) -> None:
        """The line went quiet: whatever is buffered is one complete (and so far unparsable) frame."""
        port.silence_call = None
        frame, port.buf = port.buf, b""
        if crc_ok(frame) and frame[0] in self._devices:
            # A sound frame with a function code we do not know: the device says so.
            self._dispatch(port, frame)
            return
        self.stats["garbage_bytes"] += len(frame)
        log.debug("{bus}: dropped {n} bytes of noise", bus=self.name, n=len(frame))

    def _dispatch(self, port: BusPort, frame: bytes) -> None:
        unit = frame[0]
        self.stats["requests"] += 1
        reply = self._reply_for(unit, frame[1:-2])
        if reply is not None:
            self.stats["replies"] += 1
            if self._corrupt_replies:
                self._corrupt_replies -= 1
                reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        else:
            self.stats["unanswered"] += 1
        self._send(port, len(frame), reply)

    def _reply_for(self, unit: int, pdu_bytes: bytes) -> bytes | None:
        if unit == 0:
            request = self._decoder.decode(pdu_bytes)
            for device in list(self._devices.values()):
                if request is not None and device.unit not in self._muted:
                    request.dev_id = 0
                    device.handle(request)
            return None
        device = self._devices.get(unit)
        if device is None or unit in self._muted:
            return None
        request = self._decoder.decode(pdu_bytes)
        if request is None:
            response = ExceptionResponse(pdu_bytes[0], ILLEGAL_FUNCTION)
        else:
            request.dev_id = unit
            response = device.handle(request)
        if response is None:
            return None
        if isinstance(response, Garbage):
            return bytes(response)
        if isinstance(response, ModbusPDU):
            response = response.function_code.to_bytes(1, "big") + response.encode()
        return rtu_frame(unit, bytes(response))

    def _send(self, port: BusPort, request_len: int, reply: bytes | None) -> None:
        if self.timing is None:
            if reply is None:
                return
            if self.turnaround_s > 0:
                self._later(self.turnaround_s, port.write, reply)
            else:
                port.write(reply)
            return
        now = self._reactor.seconds()
        start = max(port.first_byte_at if port.first_byte_at is not None else now, self._line_free_at)
        request_end = start + self.timing.bytes_s(request_len)
        if reply is None:
            self._line_free_at = request_end + self.timing.t35_s
            return
        reply_end = request_end + self.timing.t35_s + self.turnaround_s + self.timing.bytes_s(len(reply))
        self._line_free_at = reply_end + self.timing.t35_s
        # The reply reaches the master as one chunk when its last byte is off the wire, as a USB adapter
        # hands over what it collected.
        self._later(max(0.0, reply_end - now), port.write, reply)

    def _later(self, delay_s: float, f, *args) -> None:
        def run():
            self._pending.discard(call)
            f(*args)
        call = self._reactor.callLater(delay_s, run)
        self._pending.add(call)

    # -- lifecycle -------------------------------------------------------------------------------------

    def close(self) -> defer.Deferred:
        """Close the pty, the tunnel and every pending reply; remove the temporary tty link."""
        for call in list(self._pending):
            if call.active():
                call.cancel()
        self._pending.clear()
        self.vanish()
        for port in list(self._ports):
            port.detach()
        d = self.stop_listening()
        if self._own_tmpdir:
            shutil.rmtree(self._own_tmpdir, ignore_errors=True)
            self._own_tmpdir = None
        self._tty_link = None
        return d
