"""``--set=name=value,...`` flags of the benchmark scripts as ``sqjl_tf.Recipe`` settings.

    >>> parse(["finetune_weight_decay=0.5"]).finetune_weight_decay
    0.5
"""

import dataclasses
from typing import Sequence


def parse(pairs: Sequence[str]):
    """The ``sqjl_tf.Recipe`` with the settings ``pairs`` (``name=value``) changed.

    Raises:
        ValueError: naming the pair and what is expected, to follow "Invalid
            value for flag `--set`" (an unknown name, a value of the wrong type,
            a value ``Recipe`` refuses, or no pair at all).
    """
    from sqjl_tf import Recipe

    fields = {f.name: f.type for f in dataclasses.fields(Recipe)}
    changes = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields or not value:
            raise ValueError(f"Received: {pair!r}. Expected name=value with a name of "
                             f"{', '.join(fields)}.")
        kind = getattr(fields[name], "__name__", fields[name])  # "int", "float", "bool", "str"
        try:
            changes[name] = (value if kind == "str" else {"true": True, "false": False}[value.lower()]
                             if kind == "bool" else int(value) if kind == "int" else float(value))
        except (KeyError, ValueError):
            raise ValueError(f"Received: {pair!r}. Expected a value of type {kind} for "
                             f"{name}.") from None
    if not changes:
        raise ValueError("Received: ''. Expected one or more name=value changes (the default "
                         "recipe is the benchmark's own run).")
    try:
        return Recipe(**changes)
    except ValueError as err:  # Recipe's own message names the setting and the value
        raise ValueError(f"Received: {','.join(pairs)!r}, which Recipe refuses: {err}") from None
