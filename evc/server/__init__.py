"""Listening endpoints of a site (the OCPP central system that chargers connect to), one module per type."""
