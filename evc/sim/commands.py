"""The simulators' command line: one command per line in, one JSON answer per line out (stdin or a TCP port)."""
from __future__ import annotations

import json
import os
import stat
from typing import Callable

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class CommandLines(LineOnlyReceiver):
    """Answers each line with json(run(line)). A script may pipe its commands and close stdin at once: the answers
    must still go out, and the simulator keeps running until it is signalled."""
    delimiter = b"\n"

    def __init__(self, run: Callable[[str], dict]):
        self.run = run

    def readConnectionLost(self):
        pass

    def writeConnectionLost(self):
        pass

    def lineReceived(self, line):
        self.sendLine(json.dumps(self.run(line.decode("utf-8", "replace"))).encode())


class CommandFactory(Factory):
    """Serves CommandLines on a listening port (e.g. a simulator's --control-port)."""

    def __init__(self, run: Callable[[str], dict]):
        self.run = run

    def buildProtocol(self, addr):
        return CommandLines(self.run)


def pollable(stream) -> bool:
    """Whether `stream` can be watched by the reactor (a tty, pipe or socket; not /dev/null or a file)."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return stream.isatty() or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def listen_stdin(run: Callable[[str], dict], stdin) -> None:
    """Take commands on stdin when it is something the reactor can watch."""
    if pollable(stdin):
        from twisted.internet.stdio import StandardIO
        StandardIO(CommandLines(run))
