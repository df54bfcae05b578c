"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""


class FvrBenchError(Exception):
    """Base class: the message names the file/clip and the problem, and says what to do."""


class ConfigError(FvrBenchError):
    """An option or a combination of options that cannot run."""


class DataError(FvrBenchError):
    """A dataset, clip, frame or video file that cannot be read or does not fit the rest."""


class WeightsMissingError(FvrBenchError):
    """A pretrained file that is declared but not found locally."""


class RestorerOutputError(FvrBenchError):
    """A restorer returned something that is not a valid restored clip (NaN/Inf, wrong shape)."""


class ResultsMismatchError(FvrBenchError):
    """A run directory holds results of a different configuration; they are never mixed."""


class RunInProgressError(FvrBenchError):
    """Another process is writing the same run directory (its PID is in the message)."""


class ClipNotScorableError(FvrBenchError):
    """A metric cannot score this clip (e.g. frames below its minimum size). The evaluator
    records the metric as not scored for that clip, with this message as the reason, and
    goes on with the other metrics and clips."""
