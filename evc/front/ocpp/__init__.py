"""front/ocpp: EVC as OCPP 1.6J charge point(s) toward an upstream backend (CSMS); importing it registers the type."""
from evc.front.ocpp.front import OcppFront, OcppFrontConfig

__all__ = ["OcppFront", "OcppFrontConfig"]
