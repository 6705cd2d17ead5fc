"""End-to-end jobs the CLI runs (each CLI command calls exactly one of these).

Importing this package registers the built-in prune methods (``builtin_methods``); nothing else
happens at import.
"""

from . import builtin_methods  # noqa: F401  (registration)
