"""RFID readers (`reader/<name>`): a card presented authorizes, or stops, a session at the chargers a reader serves.

One module per type (rdm6300, pn532, line, quio); what they share is in base (the rules), link (the serial line),
presence (one card held = one presentation), uid (UID -> id tag) and framing (what the decoders drop).
"""
