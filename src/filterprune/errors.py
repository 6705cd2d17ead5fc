"""Exceptions users see. Each carries a one-line message; the CLI prints it and exits 2."""


class FilterpruneError(Exception):
    """Base class: bad input or a state the library refuses to continue from."""


class DataError(FilterpruneError):
    """A dataset could not be found, read or verified."""


class CheckpointError(FilterpruneError):
    """A checkpoint file is missing, corrupt, or does not match the model."""


class PruningError(FilterpruneError):
    """A pruning request that cannot be carried out correctly (unreachable target, untraceable op)."""


class ConfigError(FilterpruneError, ValueError):
    """A configuration value out of its range; the message names the CLI flag and the config key.

    Attributes:
        key: the dotted config key (``train.lr``), relative (``lr``) until the enclosing config names it.
        problem: what is wrong, e.g. ``must be > 0 and finite, got 0.0``.
    """

    def __init__(self, message: str, key: str = "", problem: str = "") -> None:
        super().__init__(message)
        self.key, self.problem = key, problem
