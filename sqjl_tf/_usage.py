"""The error of a bad argument: ``run.py`` prints its one line and exits with status 2."""


class UsageError(ValueError):
    """An invalid argument or combination of arguments (exit status 2 in ``run.py``)."""
