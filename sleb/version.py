"""The version of sleb, in one place: the package, the wheel's metadata and every record read it."""

__version__ = "0.1.0"
