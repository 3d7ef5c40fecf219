"""Cumulus: run Python functions on fractional GPUs of a Docker Swarm."""

from cumulus._version import __version__

__all__ = ["__version__"]
