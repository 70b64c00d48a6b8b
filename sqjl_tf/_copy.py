"""An uncompiled copy of a Keras model with the same weights, where one can be made."""

from __future__ import annotations

from typing import Optional

import keras
from absl import logging


def uncompiled_copy(model: keras.Model) -> Optional[keras.Model]:
    """A copy of ``model`` (same architecture and weights) that is not compiled.

    ``keras.models.clone_model`` recompiles the clone from the model's compile
    config, which rebuilds a wrapped optimizer without its state; the copy here
    carries no optimizer, so a compressed model never trains on silently with a
    detached ADMM optimizer, and its ``.keras`` file loads with plain Keras.

    Args:
        model: a Keras model.

    Returns:
        The copy, or None when the model cannot be rebuilt from its config
        (a subclassed model without ``get_config``, or one whose rebuilt
        weights differ from the original's).
    """
    compiled = getattr(model, "compiled", False)
    try:
        model.compiled = False  # clone_model would recompile the clone from the model's config
        clone = keras.models.clone_model(model)
        if len(clone.weights) != len(model.weights):
            return None
        clone.set_weights(model.get_weights())
    except Exception as err:  # noqa: BLE001 - any failure to rebuild means: no copy
        logging.info("%s cannot be copied from its config (%s: %s).", model.name,
                     type(err).__name__, str(err).splitlines()[0][:200])
        return None
    finally:
        model.compiled = compiled
    return clone


def detach_optimizer(model: keras.Model) -> None:
    """Replaces a wrapping optimizer of ``model`` by its inner one (in place).

    For a model finalized in place: it then trains, if trained again, as a plain
    model with its inner optimizer, never with an ADMM wrapper cut from its state.
    """
    inner = getattr(getattr(model, "optimizer", None), "inner_optimizer", None)
    if inner is not None:
        model.optimizer = inner
        model.train_function = None  # retraced with the inner optimizer
