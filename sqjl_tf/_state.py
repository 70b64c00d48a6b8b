"""State kept in a ``tf.Variable`` (so that checkpoints hold it), read as a Python value."""

from __future__ import annotations

from typing import Callable, Optional


def variable_property(attribute: str, cast: Callable, doc: Optional[str] = None) -> property:
    """A property reading and assigning the variable ``self.<attribute>`` as ``cast`` values.

    Example:
        >>> import tensorflow as tf
        >>> class Counter:
        ...     count = variable_property("_count", int, "Steps so far.")
        ...     def __init__(self):
        ...         self._count = tf.Variable(0, dtype=tf.int64)
    """

    def get(self):
        return cast(getattr(self, attribute).numpy())

    def set_(self, value) -> None:
        getattr(self, attribute).assign(cast(value))

    return property(get, set_, doc=doc)
