"""Front-ends: the upstream OCPP backend, roaming (OCPI) and the local web page, one module or package per type."""
