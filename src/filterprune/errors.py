"""Exceptions users see. Each carries a one-line message; the CLI prints it and exits 2."""


class FilterpruneError(Exception):
    """Base class: bad input or a state the library refuses to continue from."""


class DataError(FilterpruneError):
    """A dataset could not be found, read or verified."""


class CheckpointError(FilterpruneError):
    """A checkpoint file is missing, corrupt, or does not match the model."""


class PruningError(FilterpruneError):
    """A pruning request that cannot be carried out correctly (unreachable target, untraceable op)."""
