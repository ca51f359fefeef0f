"""Errors raised for bad input, before any compute."""


class ConfigError(ValueError):
  """An invalid configuration value (names the field and the allowed range)."""
