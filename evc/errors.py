"""Exceptions shared across EVC."""


class ConfigError(Exception):
    """A configuration problem, stated as a sentence that names the offending leaf or key."""


class StoreError(Exception):
    """The store (etcd) answered with an error."""


class StoreUnavailable(StoreError):
    """The store could not be reached (connection refused, reset, timed out)."""
