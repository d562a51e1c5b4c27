"""front/ocpi and front/plugsurfing: EVC as an OCPI 2.2.1 / 2.1.1 CPO toward one eMSP (docs/ocpi.md)."""
