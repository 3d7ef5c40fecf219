"""The package version (read by pyproject.toml and reported by HealthCheck)."""

__version__ = "0.1.0"
