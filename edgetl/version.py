"""The version of edgetl, in a module of its own so that the run format and the manifest can record it without
importing the package (``edgetl/__init__`` imports them).

    from edgetl.version import __version__
"""

__version__ = "0.1.0"
