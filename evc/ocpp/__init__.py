"""OCPP: the central system networked chargers connect to, and the front toward an upstream backend.

asyncio (the `ocpp` library, `websockets`) stays inside this package; everything outside sees Deferreds.
"""
