"""Errors that reach the user as one clear sentence.

Stages catch :class:`SdclrError`, print its message and exit with status 2, so a wrong
param, a missing file or a diverged run never ends in a traceback wall.
"""


class SdclrError(Exception):
    """Base class: the message is a full sentence naming what is wrong and how to fix it."""


class ConfigError(SdclrError):
    """A value in params.yaml is missing, unknown, of the wrong type or out of range."""


class DataError(SdclrError):
    """A dataset file is missing, corrupt, unverifiable or cannot be fetched."""


class TrainingError(SdclrError):
    """Training cannot go on (for example the loss became NaN or infinite)."""
