"""The error of a bad argument: ``run.py`` prints its one line and exits with status 2."""


class UsageError(ValueError):
    """An invalid argument or combination of arguments (exit status 2 in ``run.py``)."""


def invalid_argument(name: str, value, expected: str, error: type = ValueError) -> ValueError:
    """``error`` with the Keras-form message (argument, value received, what is expected)."""
    return error(f"Invalid value for argument `{name}`. Received: {value!r}. Expected {expected}.")
