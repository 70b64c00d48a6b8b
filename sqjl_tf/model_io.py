"""The models of a run: built, or read from the files the arguments name, and checked.

A file that cannot be read, or that does not fit the arguments (architecture,
classes, input shape, fine-tuning targets), is a usage error naming the argument,
raised before any file of the run is written.
"""

from __future__ import annotations

import os
import pickle
import zipfile

from sqjl_tf._usage import UsageError
from sqjl_tf.config import TrainConfig
from sqjl_tf.rundir import RunDir


def _load_model(path: str, cfg: TrainConfig, info):
    """A model from a .keras / .sqjl file, or the arch with weights from a file."""
    import keras

    from sqjl_tf.models import build_model

    if path and path.endswith(".keras"):
        return keras.models.load_model(path, compile=False)
    if path and path.endswith(".sqjl"):
        from sqjl_tf.export import load_compressed

        return load_compressed(path)
    model = build_model(cfg.model.arch, info.num_classes, info.input_shape, dropout=cfg.model.dp,
                        **({"pretrained": True} if path == "keras" else {}))
    if path and path != "keras":
        from sqjl_tf import checkpoint

        run_checkpoint = os.path.join(path, RunDir.LATEST)  # path a run folder
        if path.endswith((".pth", ".pt")) or path.endswith(".torch.npz"):
            from sqjl_tf.models.convert import load_torchvision_alexnet

            load_torchvision_alexnet(model, path)  # torchvision AlexNet state dict
        elif checkpoint.exists(path) or checkpoint.exists(run_checkpoint):
            checkpoint.load_checkpoint(path if checkpoint.exists(path) else run_checkpoint, model)
        else:
            model.load_weights(path)
    return model


# What reading a damaged or foreign model file raises (the readers are Keras, h5py, NumPy's
# zip files, torch's pickles): each is a usage error naming the file.
_UNREADABLE = (ValueError, OSError, KeyError, IndexError, TypeError, ImportError, EOFError,
               RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError)


def short_error(err: BaseException, limit: int = 300) -> str:
    """``err`` as one line of at most ``limit`` characters, with its type."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def checked_load(cfg: TrainConfig, info, name: str = "pretrain", arch_given: bool = False):
    """Loads the model file in argument ``name`` (pretrain or teacher) and checks it.

    The model must take the dataset's images and give its classes. A whole-model
    file (``.keras``, ``.sqjl``) brings its own architecture: given as ``pretrain``
    with ``arch_given`` (``arch`` set by the caller, not defaulted), it must be
    ``cfg.model.arch``'s.

    Raises:
        UsageError: if the file cannot be read or does not fit.
    """
    path = getattr(cfg.model, name)  # pretrain or teacher
    try:
        model = _load_model(path, cfg, info)
    except _UNREADABLE as err:
        raise UsageError(
            f"Invalid value for argument `{name}`. Received: {path!r}. Expected a "
            f"loadable model file for arch={cfg.model.arch!r} ({short_error(err)})."
        ) from err
    expected = (None,) + tuple(info.input_shape)
    if tuple(model.input_shape) != expected or model.output_shape[-1] != info.num_classes:
        raise UsageError(
            f"Invalid value for argument `{name}`. Received: {path!r}, a model with "
            f"input {model.input_shape} and {model.output_shape[-1]} outputs. Expected input "
            f"{expected} and {info.num_classes} outputs for dataset={cfg.data.dataset!r}."
        )
    if name == "pretrain" and arch_given and path.endswith((".keras", ".sqjl")):
        _check_architecture(cfg, model, info)
    return model


def _check_architecture(cfg: TrainConfig, model, info) -> None:
    """A whole-model ``pretrain`` file must hold ``cfg.model.arch``: same weights, same shapes."""
    reference = built_model(cfg, info)
    got = [tuple(w.shape) for w in model.weights]
    want = [tuple(w.shape) for w in reference.weights]
    if got == want:
        return
    if len(got) != len(want):
        found = f"{len(got)} weights where a {cfg.model.arch} model has {len(want)}"
    else:
        i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        found = (f"weight {model.weights[i].path!r} of shape {got[i]} where a {cfg.model.arch} "
                 f"model has {want[i]}")
    raise UsageError(
        f"Invalid value for argument `pretrain`. Received: {cfg.model.pretrain!r}, a model "
        f"{model.name!r} of another architecture than arch={cfg.model.arch!r} ({found}). Expected "
        f"a {cfg.model.arch} model, or no `arch` to take the file's architecture.")


def built_model(cfg: TrainConfig, info):
    """A new model of architecture ``cfg.model.arch`` for the dataset of ``info``."""
    from sqjl_tf.models import build_model

    try:
        return build_model(cfg.model.arch, info.num_classes, info.input_shape, dropout=cfg.model.dp)
    except ValueError as err:
        raise UsageError(
            f"Invalid value for argument `arch`. Received: {cfg.model.arch!r}. Expected an "
            f"architecture for dataset={cfg.data.dataset!r} (input {tuple(info.input_shape)}, "
            f"{info.num_classes} classes) ({short_error(err)})."
        ) from err


def check_finetune_targets(cfg: TrainConfig, model) -> None:
    """``weightbits`` and ``prune_to`` must fit the model: one entry per compressible layer.

    The fine-tuning callback checks them too, but only once training starts,
    after the run folder is written.
    """
    import keras
    import numpy as np

    from sqjl_tf.layers import compressible_kernels

    kernels = compressible_kernels(model)
    names = ", ".join(k.name for k in kernels)

    def bad(name, value, expected):
        if cfg.finetune.from_run:  # the values came from the run's final.json
            expected += f" (the run's final.json gives {name}={value!r})"
            name, value = "from_run", cfg.finetune.from_run
        raise UsageError(f"Invalid value for argument `{name}`. Received: {value!r}. "
                         f"Expected {expected}.")

    weightbits, prune_to = cfg.finetune.weightbits, cfg.finetune.prune_to
    if weightbits is not None and len(weightbits) != len(kernels):
        bad("weightbits", weightbits, f"{len(kernels)} widths, one per compressible layer "
            f"of the pretrain model ({names})")
    if prune_to is not None:
        nonzeros = [int(np.count_nonzero(keras.ops.convert_to_numpy(k.variable)))
                    for k in kernels]
        if len(prune_to) != len(kernels) or any(n > m for n, m in zip(prune_to, nonzeros)):
            bad("prune_to", prune_to, f"{len(kernels)} counts, one per compressible layer "
                f"of the pretrain model ({names}), each at most the layer's nonzeros {nonzeros}")
