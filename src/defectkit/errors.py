"""Errors that reach the user as one clear line.

Anything a user can cause (a wrong path, a broken file, a bad option) raises a subclass of
``DefectkitError``; the CLI prints its message without a traceback and exits with code 2.
"""


class DefectkitError(Exception):
    """Base class: its message is shown to the user as-is."""


class DataError(DefectkitError):
    """A dataset, file or split is missing, unreadable or inconsistent."""


class ConfigError(DefectkitError):
    """An option or configuration value is invalid."""
