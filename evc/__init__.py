"""EVC: a controller for electric-vehicle charging sites."""
__version__ = "0.1.0"
