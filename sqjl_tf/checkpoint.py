"""Training checkpoints: model, optimizer and ADMM state in one atomic file.

A checkpoint is a single ``.npz`` file holding every model weight, every
optimizer variable (the iteration count included, so learning-rate schedules
resume), the ADMM state (V, U, bits, nnz, schedule position), any further named
run state (``variables``: the learning-rate scale, a plateau-lowered rate, the
fine-tuning callback's shadows, masks, codebooks and schedule, the layers'
random-seed states) and a JSON metadata record. It is written to a temporary
file in the same folder and renamed over the target (:mod:`sqjl_tf._files`), so a
crash during a save leaves the previous checkpoint intact and loadable.

Example:
    >>> save_checkpoint("run/latest.ckpt.npz", model, optimizer, cb.state, {"epoch": 3},
    ...                 variables={"lr/scale": schedule.scale})
    >>> meta = load_checkpoint("run/latest.ckpt.npz", model, optimizer, cb.state,
    ...                        variables={"lr/scale": schedule.scale})
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from absl import logging

from sqjl_tf._files import atomic_path
from sqjl_tf._npz import check_sizes

_FORMAT = "sqjl_tf.checkpoint/1"  # "state/" entries are new, and optional: still version 1
_STATE = "state/"


def _numpy(variable) -> np.ndarray:
    """The value of a ``tf.Variable`` or ``keras.Variable`` as a NumPy array."""
    return np.asarray(variable.numpy())


def _check_names(variables: Mapping[str, Any]) -> None:
    for name in variables:
        if not (isinstance(name, str) and name and "\0" not in name):
            raise ValueError(f"Invalid value for argument `variables`. Received: a name {name!r}. "
                             "Expected non-empty strings naming the variables.")


def save_checkpoint(
    path: str,
    model,
    optimizer=None,
    admm_state=None,
    metadata: Optional[Dict[str, Any]] = None,
    variables: Optional[Mapping[str, Any]] = None,
) -> str:
    """Writes a checkpoint atomically (temporary file, then rename).

    Args:
        path: target file (``.npz``).
        model: the Keras model.
        optimizer: its optimizer (optional).
        admm_state: an ``ADMMState`` (optional).
        metadata: JSON-serialisable dict (epoch, metrics...).
        variables: further run state, ``{name: tf.Variable or keras.Variable}``
            (optional); :func:`load_checkpoint` restores them by name.

    Returns:
        ``path``.

    Raises:
        ValueError: if a name in ``variables`` is not a non-empty string.
    """
    arrays = {}
    for i, w in enumerate(model.weights):
        arrays[f"model/{i}"] = np.asarray(w.numpy())
    if optimizer is not None and optimizer.built:
        for i, v in enumerate(optimizer.variables):
            arrays[f"optimizer/{i}"] = np.asarray(v.numpy())
    if admm_state is not None:
        for key, value in admm_state.get_state().items():
            arrays[f"admm/{key}"] = np.asarray(value)
    if variables:
        _check_names(variables)
        for name, variable in variables.items():
            arrays[_STATE + name] = _numpy(variable)
    meta = {"format": _FORMAT, "num_model_weights": len(model.weights)}
    meta.update(metadata or {})
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata record of a checkpoint (cheap: reads one entry)."""
    with _open(path) as data:
        return _metadata(data, path)


def state_names(path: str) -> List[str]:
    """The names of the run state (``variables`` of :func:`save_checkpoint`) a checkpoint holds.

    Cheap: reads the archive's directory, no array.

    Example:
        >>> "lr/scale" in state_names("run/latest.ckpt.npz")
        True
    """
    with _open(path) as data:
        return sorted(k[len(_STATE):] for k in data.files if k.startswith(_STATE))


def _invalid(path: str, what: Any) -> ValueError:
    """The error of a file that is not a checkpoint: it names the file and what is wrong."""
    return ValueError(
        f"Invalid value for argument `path`. Received: '{path}'. Invalid checkpoint file: {what}. "
        "Expected a file written by save_checkpoint."
    )


def _metadata(data, path: str) -> Dict[str, Any]:
    """The checkpoint's metadata record, a dict (a ValueError for anything else)."""
    try:
        meta = json.loads(bytes(data["metadata"]).decode())
    except (ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise _invalid(path, f"unreadable metadata ({type(err).__name__})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("num_model_weights"), int):
        raise _invalid(path, "metadata without the number of model weights")
    return meta


def _open(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: '{path}'.")
    try:
        check_sizes(path)  # save_checkpoint stores its members uncompressed
        data = np.load(path, allow_pickle=False)
        if "metadata" not in data.files:
            raise ValueError("no metadata entry")
        return data
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise _invalid(path, err) from err


def load_checkpoint(path: str, model, optimizer=None, admm_state=None,
                    variables: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Restores what :func:`save_checkpoint` wrote.

    The optimizer is built on the model's trainable variables if needed. Every
    shape is checked before anything is assigned.

    Args:
        path: the checkpoint file.
        model: a model of the same architecture.
        optimizer: the optimizer to restore (optional).
        admm_state: the ``ADMMState`` to restore (optional).
        variables: run state to restore by name, ``{name: variable}``, as
            given to :func:`save_checkpoint` (optional). A name the checkpoint
            does not hold (one written before that state was saved) keeps its
            variable's value, with a warning; entries not asked for are ignored.

    Returns:
        The metadata dict.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a checkpoint, or does not match the
            model (number or shapes of weights) or ``variables`` (shapes).
    """
    with _open(path) as data:
        meta = _metadata(data, path)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"Invalid checkpoint file '{path}': unknown format {meta.get('format')!r}.")
        weights = model.weights
        if meta["num_model_weights"] != len(weights):
            raise ValueError(
                f"Invalid checkpoint file '{path}' for this model: it holds "
                f"{meta['num_model_weights']} weights, the model has {len(weights)} "
                "(a different architecture?)."
            )
        missing = [f"model/{i}" for i in range(len(weights)) if f"model/{i}" not in data.files]
        if missing:
            raise _invalid(path, f"no entries {missing}")
        values = [data[f"model/{i}"] for i in range(len(weights))]
        for w, v in zip(weights, values):
            if tuple(w.shape) != v.shape:
                raise ValueError(
                    f"Invalid checkpoint file '{path}' for this model: weight '{w.path}' has "
                    f"shape {tuple(w.shape)}, the checkpoint {v.shape} (a different architecture?)."
                )
        state_values = _state_values(data, path, variables or {})
        for w, v in zip(weights, values):
            w.assign(v)
        if optimizer is not None:
            keys = sorted(
                (k for k in data.files if k.startswith("optimizer/")),
                key=lambda k: int(k.split("/")[1]),
            )
            if keys:
                if not optimizer.built:
                    optimizer.build(model.trainable_variables)
                if len(keys) != len(optimizer.variables):
                    raise ValueError(
                        f"Invalid checkpoint file '{path}' for this optimizer: it holds "
                        f"{len(keys)} optimizer variables, the optimizer has "
                        f"{len(optimizer.variables)}."
                    )
                for v, k in zip(optimizer.variables, keys):
                    v.assign(data[k])
        if admm_state is not None:
            state = {k[len("admm/"):]: data[k] for k in data.files if k.startswith("admm/")}
            if state:
                admm_state.set_state(state)
        for name, (variable, value) in state_values.items():
            variable.assign(value)
    return meta


def _state_values(data, path: str, variables: Mapping[str, Any]) -> Dict[str, tuple]:
    """``{name: (variable, value)}`` of the ``variables`` the checkpoint holds, shapes checked."""
    _check_names(variables)
    found, missing = {}, []
    for name, variable in variables.items():
        key = _STATE + name
        if key not in data.files:
            missing.append(name)
            continue
        value = data[key]
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Invalid checkpoint file '{path}' for this run: its state {name!r} has shape "
                f"{value.shape}, the run's {tuple(variable.shape)} (another configuration?).")
        found[name] = (variable, value)
    if missing:
        logging.warning("Checkpoint %s holds no %s (written before that state was saved): "
                        "kept as they are.", path, ", ".join(missing))
    return found
