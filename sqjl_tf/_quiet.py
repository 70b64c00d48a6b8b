"""TensorFlow's own INFO lines, silenced where they say nothing to a user."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


def _warnings_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def tensorflow_info_off() -> Iterator[None]:
    """No INFO records while inside (TF's savers log through absl's Python logger).

    Checkpoint writes and SavedModel exports otherwise log "Sharding callback
    duration", "Assets written to <temporary folder>", "Writing fingerprint", ...
    Warnings and errors still show. A filter, not a level: TF's SavedModel
    export sets absl's verbosity while it runs, which resets the loggers' levels
    (after it, absl's default WARNING would hide every INFO line of the run);
    the levels found on entry are put back on exit.
    """
    quieted = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = {logger: logger.level for logger in quieted + [logging.getLogger()]}
    for logger in quieted:
        logger.addFilter(_warnings_and_above)
    try:
        yield
    finally:
        for logger in quieted:
            logger.removeFilter(_warnings_and_above)
        for logger, level in levels.items():
            logger.setLevel(level)
