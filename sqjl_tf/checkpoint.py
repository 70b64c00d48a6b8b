"""Training checkpoints: model, optimizer, ADMM state and run state, by ``tf.train.Checkpoint``.

A checkpoint is a folder (``latest.ckpt``, ``best.ckpt``, ``epoch_0004.ckpt`` in a
run folder) laid out as a ``tf.train.CheckpointManager`` keeps one: one TensorFlow
checkpoint (``ckpt-N.index`` and ``ckpt-N.data-*``) and the ``checkpoint`` file
that points at it (``tf.train.latest_checkpoint`` reads it). A save writes the
next ``ckpt-N+1`` beside the current one and then replaces the pointer atomically,
so a process killed during a save leaves the previous checkpoint in place and
loadable; what the killed save left is removed by the next one.

Everything is saved by ``tf.train.Checkpoint``: the model's weights (as a list,
see :func:`_root`), the optimizer's (its iteration count included, so learning
rate schedules resume), the ``ADMMState``'s (V, U, bits, nnz, rho, schedule
position) and any further named run state (``variables``: the learning-rate
scale, a plateau-lowered rate, the fine-tuning callback's shadows, masks and
centres, its pruning step). Beside it, ``ckpt-N.json`` holds a metadata record
(epoch, best value), written before the pointer moves.

Restoring checks the file before TensorFlow reads a tensor: every tensor the
index declares must be paid for by the data file's size (a crafted index cannot
make it allocate more), and every object asked for must be in the checkpoint.

Example:
    >>> save_checkpoint("run/latest.ckpt", model, optimizer, cb.state, {"epoch": 3},
    ...                 variables={"lr/scale": schedule.scale})
    >>> meta = load_checkpoint("run/latest.ckpt", model, optimizer, cb.state,
    ...                        variables={"lr/scale": schedule.scale})
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Any, Dict, List, Mapping, Optional

from sqjl_tf._files import is_temporary, write_json, write_text
from sqjl_tf._quiet import tensorflow_info_off

_FORMAT = "sqjl_tf.checkpoint/2"  # 1: the single .npz file of sqjl_tf <= 0.x
_POINTER = "checkpoint"  # the CheckpointManager's file naming the current checkpoint
_PREFIX = "ckpt"
_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"  # the key suffix of a variable's value
_STATE_KEY = re.compile(r"state/(.+)/\.ATTRIBUTES/VARIABLE_VALUE")
_OWN_FILE = re.compile(rf"{_PREFIX}-\d+(\.index|\.data-\d+-of-\d+|_temp.*|\.json)")
_NUMBERED = re.compile(rf"{_PREFIX}-(\d+)\b")
_MAX_METADATA = 1 << 20  # bytes: a record of a few numbers


def exists(path: str) -> bool:
    """Whether ``path`` is a checkpoint folder that names a checkpoint (cheap, no TF)."""
    return os.path.isfile(os.path.join(path, _POINTER))


def _check_names(variables: Mapping[str, Any]) -> None:
    for name in variables:
        if not (isinstance(name, str) and name and "\0" not in name):
            raise ValueError(f"Invalid value for argument `variables`. Received: a name {name!r}. "
                             "Expected non-empty strings naming the variables.")


def _root(model, optimizer, admm_state, variables):
    """The ``tf.train.Checkpoint`` of a run's objects.

    The model is saved as the list of its weights (in ``model.weights`` order, as
    Keras's own weight files match them), not as the model object: a compiled
    model's object graph holds its optimizer, and restoring it into a model that
    gets an optimizer later (a fine-tuning started from a compression run's
    checkpoint) would hand the new optimizer the old one's step, through
    ``tf.train.Checkpoint``'s deferred restoration.
    """
    import tensorflow as tf

    objects = {"model": list(model.weights)}
    if optimizer is not None and optimizer.built:
        objects["optimizer"] = optimizer
    if admm_state is not None:
        objects["admm"] = admm_state
    if variables:
        _check_names(variables)
        objects["state"] = dict(variables)
    return tf.train.Checkpoint(**objects)


def save_checkpoint(
    path: str,
    model,
    optimizer=None,
    admm_state=None,
    metadata: Optional[Dict[str, Any]] = None,
    variables: Optional[Mapping[str, Any]] = None,
) -> str:
    """Writes a checkpoint into the folder ``path``, replacing the one it holds.

    Args:
        path: the checkpoint folder (created if needed; it holds only checkpoint files).
        model: the Keras model.
        optimizer: its optimizer (optional; saved once built).
        admm_state: an ``ADMMState`` (optional).
        metadata: JSON-serialisable dict (epoch, metrics...).
        variables: further run state, ``{name: tf.Variable or keras.Variable}``
            (optional); :func:`load_checkpoint` restores them by name.

    Returns:
        The prefix of the TensorFlow checkpoint written (``path/ckpt-N``).

    Raises:
        ValueError: if a name in ``variables`` is not a non-empty string.
    """
    meta = {"format": _FORMAT, "num_model_weights": len(model.weights)}
    meta.update(metadata or {})
    root = _root(model, optimizer, admm_state, variables)
    os.makedirs(path, exist_ok=True)
    numbers = [int(m.group(1)) for m in map(_NUMBERED.match, os.listdir(path)) if m]
    name = f"{_PREFIX}-{max(numbers, default=0) + 1}"  # beside every other, even a killed save's
    prefix = os.path.join(path, name)
    write_json(prefix + ".json", meta)
    with tensorflow_info_off():  # TF logs "Sharding callback duration" at each write
        root.write(prefix)
    _write_pointer(path, name)  # the commit
    _remove_others(path, prefix)
    return prefix


def _write_pointer(path: str, name: str) -> None:
    """Points the folder's ``checkpoint`` file at ``name``, replacing it atomically.

    The file is TensorFlow's ``CheckpointState`` (text format), which
    ``tf.train.latest_checkpoint`` reads; it names the checkpoint relative to the
    folder, so a folder moved or copied still names its own. Not written by a
    ``tf.train.CheckpointManager``: its save first makes a save counter, a variable,
    and made inside a ``MultiWorkerMirroredStrategy``'s scope on the chief alone,
    that is a collective the other workers never join.
    """
    write_text(os.path.join(path, _POINTER),
               f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')


def _remove_others(path: str, prefix: str) -> None:
    """Removes the checkpoint files in ``path`` that are not ``prefix``'s (a killed save's)."""
    current = os.path.basename(prefix)
    for name in os.listdir(path):
        if (_OWN_FILE.fullmatch(name) and not name.startswith(current + ".")) or is_temporary(name):
            target = os.path.join(path, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)


def _invalid(path: str, what: Any) -> ValueError:
    """The error of a file that is not a checkpoint: it names the file and what is wrong."""
    return ValueError(
        f"Invalid value for argument `path`. Received: '{path}'. Invalid checkpoint: {what}. "
        "Expected a checkpoint folder written by save_checkpoint.")


def prefix_of(path: str) -> str:
    """The TensorFlow checkpoint prefix a checkpoint folder (or a prefix) names.

    Raises:
        FileNotFoundError: if ``path`` names no checkpoint.
    """
    import tensorflow as tf

    if os.path.isfile(path + ".index"):
        return path
    if not exists(path):
        raise FileNotFoundError(f"Checkpoint not found: '{path}'.")
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None or not os.path.isfile(prefix + ".index"):
        raise FileNotFoundError(f"Checkpoint not found: '{path}' names no checkpoint file "
                                f"(its '{_POINTER}' file is unreadable or stale).")
    return prefix


def _reader(path: str):
    """``(prefix, reader)`` of a checked checkpoint: nothing declared beyond the data's size."""
    import numpy as np
    import tensorflow as tf

    prefix = prefix_of(path)
    data_size = sum(os.path.getsize(f) for f in glob.glob(glob.escape(prefix) + ".data-*"))
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as err:
        raise _invalid(path, f"unreadable index ({type(err).__name__})") from err
    declared = 0
    for key, shape in shapes.items():
        dtype = dtypes[key]
        # A string takes at least its one-byte length; a number its size.
        item = 1 if dtype == tf.string else dtype.size
        declared += int(np.prod(shape, dtype=np.float64)) * item
    if declared > data_size:
        raise _invalid(path, f"its index declares {declared:.4g} bytes of tensors, its data "
                             f"holds {data_size}")
    return prefix, reader


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata record of a checkpoint (cheap: reads one entry).

    Raises:
        FileNotFoundError: if ``path`` names no checkpoint.
        ValueError: if it is not a checkpoint of this format.
    """
    prefix, _ = _reader(path)
    return _metadata(path, prefix)


def _metadata(path: str, prefix: str) -> Dict[str, Any]:
    """The metadata record ``prefix.json`` of the checked checkpoint ``path`` names."""
    try:
        if os.path.getsize(prefix + ".json") > _MAX_METADATA:
            raise ValueError(f"over {_MAX_METADATA} bytes")
        with open(prefix + ".json", "rb") as f:
            meta = json.loads(f.read().decode())
    except (OSError, ValueError, RecursionError) as err:
        raise _invalid(path, f"no readable metadata {os.path.basename(prefix)}.json "
                             f"({type(err).__name__})") from err
    found = meta.get("format") if isinstance(meta, dict) else meta
    if found != _FORMAT:
        raise _invalid(path, f"unknown format {found!r}")
    return meta


def _unescape(name: str) -> str:
    """A name as given, from its checkpoint key (TF writes "/" as ".S" and "." as "..")."""
    return re.sub(r"\.(.)", lambda m: "/" if m.group(1) == "S" else m.group(1), name)


def state_names(path: str) -> List[str]:
    """The names of the run state (``variables`` of :func:`save_checkpoint`) a checkpoint holds.

    Example:
        >>> "lr/scale" in state_names("run/latest.ckpt")
        True
    """
    _, reader = _reader(path)
    return sorted(_unescape(m.group(1)) for m in map(_STATE_KEY.fullmatch,
                                                     reader.get_variable_to_shape_map()) if m)


def read_arrays(path: str) -> Dict[str, Any]:
    """Every tensor a checkpoint holds, as NumPy arrays keyed by object path (for inspection).

    A run-state variable's key is ``"state/" + its name``; the others are
    ``tf.train.Checkpoint``'s object paths (``"admm/bits"``, ``"optimizer/_iterations"``).

    Example:
        >>> read_arrays("run/latest.ckpt")["state/lr/scale"]
        array(1., dtype=float32)
    """
    _, reader = _reader(path)
    arrays = {}
    for key in reader.get_variable_to_shape_map():
        match = _STATE_KEY.fullmatch(key)
        if match:
            arrays["state/" + _unescape(match.group(1))] = reader.get_tensor(key)
        elif key.endswith(_VALUE) and not key.startswith("save_counter"):
            arrays[key[:-len(_VALUE)]] = reader.get_tensor(key)
    return arrays


def load_checkpoint(path: str, model, optimizer=None, admm_state=None,
                    variables: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Restores what :func:`save_checkpoint` wrote, into the objects given.

    The optimizer is built on the model's trainable variables if needed. What
    the checkpoint holds beyond the objects given (an optimizer, when only the
    model is asked for) is left unread.

    Args:
        path: the checkpoint folder (or a ``ckpt-N`` prefix in it).
        model: a model of the same architecture.
        optimizer: the optimizer to restore (optional).
        admm_state: the ``ADMMState`` to restore (optional).
        variables: run state to restore by name, ``{name: variable}``, as
            given to :func:`save_checkpoint` (optional).

    Returns:
        The metadata dict.

    Raises:
        FileNotFoundError: if ``path`` names no checkpoint.
        ValueError: if it is not a checkpoint, or does not hold every object
            given, with its shapes (a different architecture or configuration).
            The objects may then be partly restored.
    """
    import tensorflow as tf

    prefix, _ = _reader(path)  # the index read and bounded once
    meta = _metadata(path, prefix)
    if meta.get("num_model_weights") != len(model.weights):
        raise ValueError(f"Invalid checkpoint '{path}' for this model: it holds "
                         f"{meta.get('num_model_weights')} model weights, the model has "
                         f"{len(model.weights)} (a different architecture?).")
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    root = _root(model, optimizer, admm_state, variables)
    try:
        status = root.read(prefix)
        status.assert_existing_objects_matched()
        status.expect_partial()
    except AssertionError as err:
        raise ValueError(f"Invalid checkpoint '{path}' for this run: it lacks some of its "
                         f"objects (a different architecture or configuration?): "
                         f"{' '.join(str(err).split())[:300]}") from err
    except ValueError as err:  # a shape that differs
        raise ValueError(f"Invalid checkpoint '{path}' for this run (a different architecture "
                         f"or configuration?): {err}") from err
    except tf.errors.OpError as err:
        raise _invalid(path, f"unreadable data ({type(err).__name__})") from err
    return meta
