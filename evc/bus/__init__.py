"""Modbus over Twisted: pure codecs (codec), the bus scheduler and IModbusBus (client), TCP links (tcp), and
the shared connection per Modbus TCP gateway that devices configured with its host:port use (gateway).

    from evc.bus.tcp import ModbusTcpClient
    bus = ModbusTcpClient(reactor, clock, "192.168.1.20", 502, timeout_s=1.0); bus.start()
    regs = await bus.read_input_registers(unit=1, address=0x0000, count=76)

RTU uses the same scheduler with `codec.RtuFraming()` and a `gap_s` (see evc.bus.client's docstring).
"""
