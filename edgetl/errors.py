"""Errors that edgetl raises for a person to read: each names the problem and the fix.

The CLI prints them as one line (``error: ...``) and exits with status 2; the Python API raises them.
"""


class EdgeTLError(Exception):
    """Base class: the message is complete and meant for the user."""


class WeightsError(EdgeTLError):
    """Weights missing, corrupt, unreachable, or of the wrong architecture / class count."""


class PolicyError(EdgeTLError):
    """Unknown policy spec, or a K the model cannot satisfy."""


class DataError(EdgeTLError):
    """Data directory missing, empty, or containing unreadable images."""


class ConfigError(EdgeTLError):
    """An option value that cannot work (unknown model, bad resolution, resume mismatch...)."""


class CacheError(EdgeTLError):
    """The prefix feature cache cannot be built or used (random inputs, no room, no memory, unwritable)."""


class FleetError(EdgeTLError):
    """A fleet run that cannot start or did not finish."""
