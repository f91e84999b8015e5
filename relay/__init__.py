"""The interview relay."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("interview-relay")
except PackageNotFoundError:  # running from a tree that was never installed
    __version__ = "0+unknown"
