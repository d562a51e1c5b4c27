"""front/manual: the site's own web page and JSON API; importing it registers the type."""
from evc.front.manual.front import ManualFront, ManualFrontConfig

__all__ = ["ManualFront", "ManualFrontConfig"]
