"""front/ocpi: EVC as an OCPI 2.2.1 / 2.1.1 CPO toward one eMSP (docs/ocpi.md); importing it registers the type.
front/plugsurfing (evc/front/plugsurfing.py) is the same code with Plugsurfing's defaults."""
from evc.front.ocpi.front import OcpiCpoFront, OcpiFront, OcpiFrontConfig

__all__ = ["OcpiFront", "OcpiCpoFront", "OcpiFrontConfig"]
