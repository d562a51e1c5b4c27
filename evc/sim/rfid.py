"""Simulated RFID readers, byte-exact on their serial line (evc.sim.serial_line) or on a simulated RS485 bus.

- `SimRdm6300`: a 125 kHz module; while a card is held it sends its 14-byte frame every `repeat_s` (55 ms), no gap
  bytes, and goes silent on removal.
- `SimLineReader`: one line per presentation (`0008075634\\r\\n`), or repeated while held (`repeat_s`).
- `SimPn532`: the PN532's HSU side: wake-up, SAMConfiguration, GetFirmwareVersion, RFConfiguration (item 5 sets the
  passive activation retries: FF, the factory setting, answers a poll only when a card comes), InListPassiveTarget,
  ACK then the reply to every good frame, a resend of the last reply on NACK, a host ACK aborting a pending poll, the
  error frame for a command it does not know; quirks: `leading_zeros` before every frame, `corrupt_replies` (bad DCS),
  `silent` (a module that does not answer).
- `SimQuio`: a QDE-950-4 as a Modbus slave (evc.sim.modbus.SimDevice) for evc.sim.rs485.SimRs485Bus: input registers
  at `register_base` + (0..49) as its manual lays them out.

Every simulator has `present(uid)` and `remove()`, and `noise(bytes)` for the serial ones.
"""
from __future__ import annotations

from twisted.internet import task

from evc.reader import pn532, rdm6300, quio
from evc.reader.framing import Dropped
from evc.sim.modbus import ILLEGAL_ADDRESS, SimDevice, SimModbusError
from evc.sim.serial_line import SimSerialLine


def _uid(uid) -> bytes:
    return bytes.fromhex(uid) if isinstance(uid, str) else bytes(uid)


class _SerialSim:
    def __init__(self, reactor, name: str):
        self.reactor = reactor
        self.line = SimSerialLine(reactor, name, self._host_data)

    def _host_data(self, data: bytes) -> None:
        pass

    def noise(self, data: bytes) -> None:
        """Bytes on the line that are no frame (a loose wire, a half frame)."""
        self.line.write(data)

    def close(self):
        self.remove()
        return self.line.close()


class SimRdm6300(_SerialSim):
    """See the module docstring. `present("6F007B3972")` or five bytes."""

    repeat_s = 0.055

    def __init__(self, reactor, name: str = "rdm6300"):
        super().__init__(reactor, name)
        self.card: bytes | None = None
        self._loop: task.LoopingCall | None = None
        self.frames = 0

    def frame(self, data: bytes | None = None) -> bytes:
        return rdm6300.encode(data or self.card)

    def present(self, uid) -> None:
        self.remove()
        self.card = _uid(uid)
        self._loop = task.LoopingCall(self._send)
        self._loop.clock = self.reactor
        self._loop.start(self.repeat_s, now=True)

    def _send(self) -> None:
        self.frames += 1
        self.line.write(self.frame())

    def remove(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.card = None


class SimLineReader(_SerialSim):
    """See the module docstring. `present("0008075634")` sends the text as one line."""

    def __init__(self, reactor, name: str = "line", end: bytes = b"\r\n", repeat_s: float | None = None):
        super().__init__(reactor, name)
        self.end = end
        self.repeat_s = repeat_s
        self.card: str | None = None
        self._loop: task.LoopingCall | None = None

    def present(self, text: str) -> None:
        self.remove()
        self.card = text
        if self.repeat_s:
            self._loop = task.LoopingCall(self._send)
            self._loop.clock = self.reactor
            self._loop.start(self.repeat_s, now=True)
        else:
            self._send()

    def _send(self) -> None:
        self.line.write(self.card.encode("ascii") + self.end)

    def remove(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.card = None


class SimPn532(_SerialSim):
    """See the module docstring. `present("1C78F2BF")` (ATQA 00 04, SAK 08) or a 7-byte UID (ATQA 00 44, SAK 00)."""

    firmware = bytes.fromhex("32010607")

    def __init__(self, reactor, name: str = "pn532", turnaround_s: float = 0.002):
        super().__init__(reactor, name)
        self.turnaround_s = turnaround_s
        self.buf = b""
        self.card: tuple[bytes, bytes, int] | None = None     # (uid, atqa, sak)
        self.retries = 0xFF
        self.configured = False
        self.field_on = False
        self.leading_zeros = 0
        self.corrupt_replies = 0
        self.silent = False
        self.commands: list[int] = []
        self.dropped: list[Dropped] = []
        self.polls = 0
        self._last_reply: bytes | None = None
        self._pending_poll = False
        self._calls = []

    def present(self, uid, atqa: bytes | None = None, sak: int | None = None) -> None:
        uid = _uid(uid)
        if atqa is None:
            atqa = b"\x00\x04" if len(uid) == 4 else b"\x00\x44"
        if sak is None:
            sak = 0x08 if len(uid) == 4 else 0x00
        self.card = (uid, atqa, sak)
        if self._pending_poll:
            self._pending_poll = False
            self._send_reply(self._target_reply())

    def remove(self) -> None:
        self.card = None

    # -- the host's bytes --

    def _host_data(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            used, item = pn532.decode(self.buf)
            if item is not None:
                self._item(item)
            if used == 0:
                break
            self.buf = self.buf[used:]

    def _item(self, item) -> None:
        if self.silent:
            return
        if isinstance(item, Dropped):
            self.dropped.append(item)          # the wake-up's 55 55 is noise here too
            return
        if isinstance(item, pn532.Ack):
            self._pending_poll = False         # the host aborts the command in progress
            return
        if isinstance(item, pn532.Nack):
            if self._last_reply is not None:
                self._write(self._last_reply)
            return
        if not isinstance(item, pn532.Frame) or item.tfi != pn532.TFI_HOST or not item.data:
            return
        self._write(pn532.ACK)
        code, params = item.data[0], item.data[1:]
        self.commands.append(code)
        if code == pn532.SAM_CONFIGURATION:
            self.configured = True
            self._send_reply(pn532.reply(code))
        elif code == pn532.GET_FIRMWARE_VERSION:
            self._send_reply(pn532.reply(code, self.firmware))
        elif code == pn532.RF_CONFIGURATION:
            if params[:1] == b"\x05" and len(params) >= 4:
                self.retries = params[3]
            elif params[:1] == b"\x01" and len(params) >= 2:
                self.field_on = bool(params[1] & 0x01)
            self._send_reply(pn532.reply(code))
        elif code == pn532.IN_LIST_PASSIVE_TARGET:
            self.polls += 1
            self.field_on = True
            if self.card is not None:
                self._send_reply(self._target_reply())
            elif self.retries == 0xFF:
                self._pending_poll = True      # answers when a card comes, or never
            else:
                self._send_reply(pn532.reply(code, b"\x00"))
        else:
            self._send_reply(pn532.ERROR_FRAME)

    def _target_reply(self) -> bytes:
        uid, atqa, sak = self.card
        return pn532.reply(pn532.IN_LIST_PASSIVE_TARGET, bytes([1, 1]) + atqa + bytes([sak, len(uid)]) + uid)

    def _send_reply(self, frame: bytes) -> None:
        self._last_reply = frame
        if self.corrupt_replies:
            self.corrupt_replies -= 1
            frame = frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]
        if self.turnaround_s:
            call = self.reactor.callLater(self.turnaround_s, self._write, frame)
            self._calls = [c for c in self._calls if c.active()] + [call]
        else:
            self._write(frame)

    def _write(self, frame: bytes) -> None:
        self.line.write(b"\x00" * self.leading_zeros + frame)

    def close(self):
        for c in self._calls:
            if c.active():
                c.cancel()
        return super().close()


class SimQuio(SimDevice):
    """A QDE-950-4 at `unit`: offsets 1-17 the UID and its length, 18-49 the UID as ASCII hex, 50 that length."""

    def __init__(self, unit: int = 1, register_base: int = 0):
        super().__init__(unit)
        self.register_base = register_base
        self.card: bytes | None = None
        self.reads = 0

    def present(self, uid) -> None:
        self.card = _uid(uid)

    def remove(self) -> None:
        self.card = None

    def registers(self) -> list[int]:
        uid = self.card or b""
        text = uid.hex().upper().encode().ljust(64, b"\x00")
        ascii_regs = [int.from_bytes(text[i:i + 2], "big") for i in range(0, 64, 2)]
        return quio.uid_registers(uid) + ascii_regs + [2 * len(uid)]

    def read_input(self, address: int, count: int) -> list[int]:
        self.check_read(address, count)
        self.reads += 1
        offset = address - self.register_base
        regs = self.registers()
        if offset < 0 or offset + count > len(regs):
            raise SimModbusError(ILLEGAL_ADDRESS)
        return regs[offset:offset + count]


def run_command(sim, line: str) -> dict:
    """One control line: `present UID`, `remove`, `noise HEX`, `vanish`, `reappear`, `drop`, `status`."""
    words = line.split()
    if not words:
        return {"ok": True}
    cmd, args = words[0], words[1:]
    try:
        if cmd == "present":
            sim.present(args[0])
        elif cmd == "remove":
            sim.remove()
        elif cmd == "status":
            card = sim.card
            return {"ok": True, "card": card.hex().upper() if isinstance(card, bytes) else
                    (card[0].hex().upper() if isinstance(card, tuple) else card)}
        elif cmd == "noise" and hasattr(sim, "noise"):
            sim.noise(bytes.fromhex(args[0]))
        elif cmd in ("vanish", "reappear", "drop") and hasattr(sim, "line"):
            {"vanish": sim.line.vanish, "reappear": sim.line.reappear, "drop": sim.line.drop_tunnel}[cmd]()
        else:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
    except (IndexError, ValueError) as e:
        return {"ok": False, "error": f"{line.strip()}: {e}"}
    return {"ok": True}


def main(argv=None) -> None:
    """python -m evc.sim.rfid TYPE [--tcp-port P] [--tty-link PATH] [--control-port P]: one simulated reader."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m evc.sim.rfid", description="A simulated RFID reader.")
    parser.add_argument("type", choices=["RDM6300", "PN532", "line", "QUIO"])
    parser.add_argument("--tcp-port", type=int, help="serve the reader's line as a raw TCP tunnel (0 = any free)")
    parser.add_argument("--tty-link", help="also open a pty behind this path (serial types)")
    parser.add_argument("--unit", type=int, default=1, help="QUIO: the Modbus address (default 1)")
    parser.add_argument("--control-port", type=int, help="also take commands on this loopback TCP port")
    args = parser.parse_args(argv)

    from twisted.internet import asyncioreactor
    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from evc.sim.commands import CommandFactory, listen_stdin
    from evc.sim.rs485 import SimRs485Bus

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    endpoints: dict = {"type": args.type}
    if args.type == "QUIO":
        sim = SimQuio(unit=args.unit)
        bus = SimRs485Bus(reactor, [sim], name="quio")
        endpoints["tcp"] = f"127.0.0.1:{bus.listen(args.tcp_port or 0)}"
        if args.tty_link:
            endpoints["tty"] = bus.open_pty(args.tty_link)
    else:
        sim = {"RDM6300": SimRdm6300, "PN532": SimPn532, "line": SimLineReader}[args.type](reactor)
        if args.tcp_port is not None or not args.tty_link:
            endpoints["tcp"] = f"127.0.0.1:{sim.line.listen(args.tcp_port or 0)}"
        if args.tty_link:
            endpoints["tty"] = sim.line.open_pty(args.tty_link)

    def control(line: str) -> dict:
        return run_command(sim, line)

    if args.control_port is not None:
        listener = reactor.listenTCP(args.control_port, CommandFactory(control), interface="127.0.0.1")
        endpoints["control"] = f"127.0.0.1:{listener.getHost().port}"
    print(json.dumps(endpoints), flush=True)
    listen_stdin(control, sys.stdin)
    reactor.run()


if __name__ == "__main__":
    main()
