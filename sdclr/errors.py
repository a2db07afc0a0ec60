"""Errors that reach the user as one clear sentence.

Stages catch :class:`SdclrError`, print its message and exit with status 2, so a wrong
param, a missing file or a diverged run never ends in a traceback wall.
"""


class SdclrError(Exception):
    """Base class: the message is a full sentence naming what is wrong and how to fix it."""


class ConfigError(SdclrError):
    """The configuration is wrong: a params file, a preset or a stage's command-line arguments."""


class ParamError(ConfigError):
    """A value in the params file is missing, unknown, of the wrong type or out of range.

    The message names the key, not the file: the file is known only to whoever read it
    (``load_params``, ``run_stage`` for errors found later, in training), which sets
    :attr:`params_file`; ``str()`` puts it in front, so the sentence names the file
    actually read (``params.yaml`` unless ``--params`` named another).
    """

    def __init__(self, message: str, params_file: str = "params.yaml"):
        super().__init__(message)
        self.message = message
        self.params_file = str(params_file)

    def __str__(self) -> str:
        return f"{self.params_file}: {self.message}"


class DataError(SdclrError):
    """A dataset file is missing, corrupt, unverifiable or cannot be fetched."""


class TrainingError(SdclrError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class TrackingError(SdclrError):
    """The MLflow tracking store cannot be reached or opened."""


class OutputError(SdclrError):
    """An output cannot be written: a full disk, a file-size limit or a quota."""


class TimeLimitStop(SdclrError):
    """A job's time-limit warning came: the run saved its checkpoint and stops for the next job
    to resume it (:mod:`sdclr.runtime.time_limit`)."""
