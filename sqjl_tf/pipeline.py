"""One call, the whole recipe: :func:`compress` a Keras model to a target size.

The stages are the library's public pieces, in the order the Fashion-MNIST
benchmark found best (``experiments/results/fashion_mnist_full.md``, ``gp14l``):

1. ADMM (:class:`~sqjl_tf.ADMMCallback` + :class:`~sqjl_tf.ADMMOptimizer`)
   learns how many nonzeros and bits each layer gets;
2. the trained weights are pruned gradually, in full precision, to the learned
   nonzeros (:class:`~sqjl_tf.QuantizedFinetuneCallback` with ``prune_to``);
3. the kernels are quantized to the learned widths and fine-tuned (same
   callback, codebooks over the nonzeros).

A total epoch budget is split between the stages as in that recipe (14 : 14 : 4
of 32, :class:`Recipe`'s shares); projection intervals are scaled to the number
of batches per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from sqjl_tf._copy import uncompiled_copy
from sqjl_tf._data_order import skip_fit, skip_iterations
from sqjl_tf._files import atomic_path, write_json
from sqjl_tf._usage import UsageError
from sqjl_tf._usage import invalid_argument as _bad
from sqjl_tf.budget import MAX_BITS, CompressionReport, compression_report
from sqjl_tf.admm import IMPORTANCES, ADMMConfig, following_normalization
from sqjl_tf.callback import ADMMCallback
from sqjl_tf.distill import Distiller
from sqjl_tf.finetune import QuantizedFinetuneCallback
from sqjl_tf.layers import compressible_kernels
from sqjl_tf.optimizer import ADMMOptimizer
from sqjl_tf.rundir import RunDir

# The benchmark's best recipe (gp14l): per-epoch intervals (the epoch shares are Recipe's).
_PROJECTIONS_PER_EPOCH = 12  # projint 20 at 235 batches per epoch
_MIN_EPOCHS = 3  # one per stage
_UNTRAINED_LOSS_SHARE = 0.9  # a loss above 0.9 ln(classes) on the training data: untrained
_LOSS_BATCHES = 8  # batches on which compress() reads a loss before training
AUTO_KDTEMP = 4.0  # the temperature Recipe(finetune_kdtemp=None) distils at, when it does
_MEMORISED_LOSS_RATIO = 2.0  # validation loss above twice the training loss: memorised
DECAY_SCOPES = ("all", "normalized")  # Recipe.finetune_decay_scope


def _is_number(value) -> bool:
    """A real number (an int, float or NumPy scalar), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How :func:`compress` trains: every setting of the three stages.

    The defaults are the Fashion-MNIST benchmarks' best settings (LeNet-5's
    recipe, with ResNet-20's per-layer ranking ``importance="lamp"`` and its
    distillation where the model has memorised its data); the epoch split is
    derived from ``epochs`` by :meth:`split`.

    Attributes:
        admm_lr: peak learning rate of the ADMM stage (SGD, cosine to 0).
        admm_momentum: its momentum.
        admm_weight_decay: its L2 weight decay.
        rho: ADMM penalty at the start.
        rho_growth: factor on rho after each ADMM epoch.
        finetune_lr: peak learning rate of stages 2-3 (Adam, cosine to 0).
        finetune_weight_decay: decoupled weight decay of stages 2-3's Adam
            (Keras's ``weight_decay``: each step ``w -= w * decay * lr``); 0: none.
        finetune_decay_scope: which weights that decay shrinks: "all" (every
            trainable weight), or "normalized": only the kernels a
            BatchNormalization layer follows, whose scale the normalization
            cancels, so that decay changes their effective learning rate and
            not what the model computes; a model without such kernels (or a
            subclassed one, whose graph is unknown) then gets none.
        projections_per_epoch: sparse projections per ADMM epoch; the dual
            update runs about once per epoch.
        admm_share: share of the epochs in the ADMM stage (gp14l: 14 of 32).
        prune_share: share of the epochs over which stage 2 shrinks the
            support to the learned nonzeros (8 of 32).
        quant_share: share of the epochs in the quantized stage (4 of 32);
            the full-precision stage 2 gets the rest.
        finetune_kdtemp: distillation temperature T of stages 2-3 (0: off):
            the loss gains ``T * CE(softmax(teacher / T), log_softmax(student
            / T))`` (:class:`~sqjl_tf.Distiller`), the teacher a frozen copy of
            the model as ADMM starts from it. None (the default): T =
            ``AUTO_KDTEMP`` (4) where that model has memorised its training
            data, a classifier with logits whose loss on the validation data is
            more than twice its loss on the training data (there the
            compressed model overfits as it is fine-tuned, and the teacher's
            soft targets regularise it), else 0; never without validation
            data or for a model that cannot be copied.
        finetune_train_centres: in the quantized stage, train the codebooks'
            centres by gradient (TFMOT's clustering) instead of Lloyd refreshes
            (``QuantizedFinetuneCallback(train_centres=True)``).
        importance: how the ADMM stage's sparse projection values a weight
            (``ADMMConfig.importance``): "magnitude" (w^2, the paper's),
            "fisher", or "lamp" (the default: w^2 normalized per layer, so the
            learned allocation does not follow the layers' scales, which
            BatchNorm and weight decay make arbitrary).

    Raises:
        ValueError: if ``finetune_kdtemp`` or ``finetune_weight_decay`` is
            negative or not finite, ``importance`` or ``finetune_decay_scope``
            unknown, a share is outside (0, 1), ``admm_share + quant_share``
            leaves no epochs to stage 2, or ``prune_share`` exceeds what it
            leaves.

    Example:
        >>> Recipe(admm_share=0.2, prune_share=0.4, quant_share=0.2).split(20)
        {'admm': 4, 'float': 12, 'prune': 8, 'quant': 4}
    """

    admm_lr: float = 0.03
    admm_momentum: float = 0.93
    admm_weight_decay: float = 5e-4
    rho: float = 0.05
    rho_growth: float = 1.1
    finetune_lr: float = 1e-3
    finetune_weight_decay: float = 0.0
    finetune_decay_scope: str = "all"
    projections_per_epoch: int = _PROJECTIONS_PER_EPOCH
    admm_share: float = 14 / 32
    prune_share: float = 8 / 32
    quant_share: float = 4 / 32
    finetune_kdtemp: Optional[float] = None
    finetune_train_centres: bool = False
    importance: str = "lamp"

    def __post_init__(self):
        if self.importance not in IMPORTANCES:
            raise _bad("importance", self.importance, f"one of {', '.join(IMPORTANCES)}")
        if not isinstance(self.finetune_train_centres, bool):
            raise _bad("finetune_train_centres", self.finetune_train_centres, "a bool")
        if self.finetune_kdtemp is not None and not (
                _is_number(self.finetune_kdtemp)
                and math.isfinite(self.finetune_kdtemp) and self.finetune_kdtemp >= 0):
            raise _bad("finetune_kdtemp", self.finetune_kdtemp, "None (distil where the model "
                       "has memorised its training data) or a finite number >= 0 (0: no "
                       "distillation)")
        if self.finetune_decay_scope not in DECAY_SCOPES:
            raise _bad("finetune_decay_scope", self.finetune_decay_scope,
                       f"one of {', '.join(DECAY_SCOPES)}")
        if not (_is_number(self.finetune_weight_decay)
                and math.isfinite(self.finetune_weight_decay) and self.finetune_weight_decay >= 0):
            raise _bad("finetune_weight_decay", self.finetune_weight_decay, "a finite number >= 0 "
                       "(0: no weight decay)")
        for name in ("admm_share", "prune_share", "quant_share"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 < value < 1):
                raise _bad(name, value, "a share of the epochs in (0, 1)")
        if self.admm_share + self.quant_share >= 1:
            raise _bad("quant_share", self.quant_share, f"less than 1 - admm_share = "
                       f"{1 - self.admm_share:.4g} (stage 2 needs epochs)")
        if self.prune_share > 1 - self.admm_share - self.quant_share + 1e-9:
            raise _bad("prune_share", self.prune_share, f"at most 1 - admm_share - quant_share = "
                       f"{1 - self.admm_share - self.quant_share:.4g} (it is part of stage 2)")

    def split(self, epochs: int) -> Dict[str, int]:
        """Epochs per stage for a total of ``epochs`` (>= 3).

        Returns:
            ``{"admm", "float", "prune", "quant"}``: ADMM epochs, full-precision
            fine-tuning epochs (of which ``prune`` shrink the support), and
            quantized fine-tuning epochs; ``admm + float + quant == epochs``.
        """
        admm = min(max(1, round(epochs * self.admm_share)), epochs - 2)
        quant = min(max(1, round(epochs * self.quant_share)), epochs - admm - 1)
        full = epochs - admm - quant
        prune = min(full, max(1, round(epochs * self.prune_share)))
        return {"admm": admm, "float": full, "prune": prune, "quant": quant}

    def intervals(self, steps_per_epoch: int) -> Tuple[int, int]:
        """(projint, dualint) in batches: ~``projections_per_epoch`` and ~1 per epoch."""
        projint = max(1, round(steps_per_epoch / self.projections_per_epoch))
        return projint, projint * max(1, round(steps_per_epoch / projint))


@dataclasses.dataclass
class CompressionResult:
    """What :func:`compress` returns.

    Attributes:
        model: the compressed Keras model (uncompiled; kernels sparse and
            quantized; it loads and runs with plain Keras).
        report: its :class:`~sqjl_tf.CompressionReport`, measured from the
            weights, with the budget verdict.
        bits: the learned bit width of each compressible kernel.
        nnz: the learned nonzeros of each compressible kernel.
        layers: the kernels' names, in the order of ``bits`` and ``nnz``.
        history: each stage's Keras ``History.history`` ("dense", "admm",
            "finetune").
        budget_bits: the budget S in bits.
        epochs: the epochs each stage ran.
        kdtemp: the temperature stages 2-3 distilled at (0: no distillation);
            with ``Recipe(finetune_kdtemp=None)``, what compress() decided.
    """

    model: keras.Model
    report: CompressionReport
    bits: List[int]
    nnz: List[int]
    layers: List[str]
    history: Dict[str, Dict[str, List[float]]]
    budget_bits: float
    epochs: Dict[str, int]
    kdtemp: float = 0.0


def split_budget(target_rate: float) -> Tuple[float, float]:
    """The (nnz_budget, bit_budget) :func:`compress` uses for a target rate alone.

    ADMM learns each layer's bits and nonzeros within the budget
    ``S = 32 * weights / target_rate`` bits whatever the split; the split sets
    the starting widths: 3 bits above 150x, 4 bits below, more when a rate
    near 4x needs every weight.

    Args:
        target_rate: compression rate of the kernels against float32, >= 4.

    Returns:
        ``(nnz_budget, bit_budget)`` with ``32 / (nnz_budget * bit_budget) == target_rate``.

    Raises:
        ValueError: if ``target_rate`` is not a finite number >= 4.

    Example:
        >>> split_budget(533.3)
        (0.02..., 3.0)
    """
    rate = float(target_rate) if isinstance(target_rate, (int, float, np.number)) else math.nan
    if not (math.isfinite(rate) and rate >= 32.0 / MAX_BITS):
        raise _bad("target_rate", target_rate, f"a number >= {32 // MAX_BITS} (32 / {MAX_BITS} "
                   "bits with every weight kept)")
    bits = max(3.0 if rate > 150 else 4.0, float(math.ceil(32.0 / rate)))
    bits = min(bits, float(MAX_BITS))
    return 32.0 / (rate * bits), bits


def _resolve_budget(target_rate, nnz_budget, bit_budget) -> Tuple[float, float]:
    if target_rate is not None:
        if nnz_budget is not None or bit_budget is not None:
            raise _bad("target_rate", target_rate, "None when nnz_budget or bit_budget is given "
                       "(give the rate alone, or both budgets)")
        return split_budget(target_rate)
    if nnz_budget is None or bit_budget is None:
        raise _bad("target_rate", None, "a compression rate (e.g. 533), or both nnz_budget and "
                   "bit_budget")
    return float(nnz_budget), float(bit_budget)


def _as_dataset(data, name: str, batch_size: int, shuffle: bool, seed: Optional[int]):
    """A batched ``tf.data.Dataset`` of (x, y) from a dataset or an (x, y) tuple of arrays."""
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if len(x) != len(y):
            raise _bad(name, f"(x with {len(x)} rows, y with {len(y)} rows)",
                       "x and y with the same number of rows")
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    raise _bad(name, type(data).__name__, "a tf.data.Dataset of (x, y) batches or an (x, y) "
               "tuple of arrays")


def _check_batched(model: keras.Model, dataset, name: str, batch_size: int) -> None:
    """Refuses a dataset of single examples (not batched) before any training.

    Decided where the model's inputs are known (Sequential and Functional
    models): every x of the dataset one rank short of the model's input is
    what ``Dataset.from_tensor_slices`` gives without ``.batch``.
    """
    if dataset is None:
        return
    try:
        inputs = tf.nest.flatten(model.inputs or [])
    except (AttributeError, ValueError):  # a subclassed model has none
        return
    spec = dataset.element_spec
    x_specs = tf.nest.flatten(spec[0] if isinstance(spec, tuple) else spec)
    data_ranks = [s.shape.rank for s in x_specs]
    model_ranks = sorted(len(t.shape) for t in inputs)
    if not inputs or None in data_ranks or sorted(data_ranks) == model_ranks:
        return
    if sorted(r + 1 for r in data_ranks) == model_ranks:
        shapes = ", ".join(str(tuple(s.shape)) for s in x_specs)
        expected = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise _bad(name, f"a dataset of single examples (x shaped {shapes})",
                   f"a dataset of batches, e.g. `dataset.batch({batch_size})`: the model takes "
                   f"x shaped {expected}")


def _steps(dataset, steps_per_epoch: Optional[int]) -> int:
    if steps_per_epoch is not None:
        if not (isinstance(steps_per_epoch, (int, np.integer)) and steps_per_epoch >= 1):
            raise _bad("steps_per_epoch", steps_per_epoch, "an integer >= 1")
        return int(steps_per_epoch)
    count = int(dataset.cardinality())
    if count < 1:  # infinite or unknown
        raise _bad("steps_per_epoch", None, "the number of batches per epoch: the training "
                   "dataset's length is unknown or infinite")
    return count


def _cross_entropy(loss):
    """The loss as a function if it is a (sparse) categorical cross-entropy, else None."""
    loss_fn = keras.losses.get(loss)
    name = getattr(loss_fn, "name", None) or getattr(loss_fn, "__name__", "")
    return loss_fn if "categorical_crossentropy" in str(name) else None


def _mean_loss(model: keras.Model, dataset, loss_fn) -> Tuple[float, int]:
    """(mean loss, number of classes) of ``model`` on the first few batches of ``dataset``."""
    total, count, classes = 0.0, 0, 0
    for batch in dataset.take(_LOSS_BATCHES):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)  # (x, y) or (x, y, weights)
        pred = model(x, training=False)  # [batch, classes]
        classes = int(pred.shape[-1])
        total += float(keras.ops.mean(loss_fn(y, pred)))
        count += 1
    return (total / count if count else math.nan), classes


def _is_untrained(model: keras.Model, dataset, loss) -> Tuple[Optional[bool], Optional[float]]:
    """Whether the model's loss on a few training batches is near chance, and that loss.

    Only decided for (sparse) categorical cross-entropy on a multi-class
    output: a loss above 0.9 ln(classes) is what an untrained classifier gets.
    (None, None) where it cannot tell.
    """
    loss_fn = _cross_entropy(loss)
    if loss_fn is None:
        return None, None
    value, classes = _mean_loss(model, dataset, loss_fn)
    if math.isnan(value) or classes < 2:
        return None, None
    return value > _UNTRAINED_LOSS_SHARE * math.log(classes), value


def _memorised(model: keras.Model, train, validation, loss,
               train_loss: Optional[float] = None) -> bool:
    """Whether ``model`` fits its training data far better than the validation data.

    Decided for a classifier with logits (a (sparse) categorical
    cross-entropy with ``from_logits=True``, as :class:`Distiller` needs):
    its loss on a few validation batches more than twice its loss on the
    training data: ``train_loss`` where compress() already measured it (a
    new pass would move the shuffled dataset's later epochs), else a few
    training batches. False without validation data, or for other losses.
    """
    loss_fn = _cross_entropy(loss)
    if validation is None or loss_fn is None or not (
            getattr(loss_fn, "get_config", dict)() or {}).get("from_logits"):
        return False
    seen = train_loss if train_loss is not None else _mean_loss(model, train, loss_fn)[0]
    held_out, classes = _mean_loss(model, validation, loss_fn)
    memorised = classes >= 2 and held_out > _MEMORISED_LOSS_RATIO * seen
    logging.info("compress(): the starting model's loss: %.4g on training batches, %.4g on "
                 "validation batches: %s.", seen, held_out,
                 "memorised, so stages 2-3 distil from it" if memorised else "no distillation")
    return bool(memorised)


def _distillation_temperature(recipe, working, model, train, validation, loss,
                              train_loss=None) -> float:
    """The temperature stages 2-3 distil at (0: none), as ``recipe.finetune_kdtemp`` says."""
    if recipe.finetune_kdtemp is not None:
        return float(recipe.finetune_kdtemp)
    if working is model:  # not copyable: no teacher
        return 0.0
    return AUTO_KDTEMP if _memorised(working, train, validation, loss, train_loss) else 0.0


class _Stages:
    """The finished stages of a :func:`compress` call in ``workdir`` (none without one)."""

    def __init__(self, workdir: Optional[str], model: keras.Model, signature: Dict[str, Any]):
        self.workdir = workdir
        self.model = model
        self.signature = json.loads(json.dumps(signature))  # as it reads back
        if workdir:
            os.makedirs(workdir, exist_ok=True)

    def _paths(self, stage: str) -> Tuple[str, str]:
        stem = os.path.join(self.workdir, f"stage_{stage}")
        return stem + ".weights.h5", stem + ".json"

    def done(self, stage: str) -> bool:
        """Whether the stage finished in ``workdir`` (of a call with the same arguments).

        Raises:
            ValueError: if it finished there for a call with other arguments.
        """
        if not (self.workdir and all(os.path.isfile(p) for p in self._paths(stage))):
            return False
        found = self.record(stage).get("signature")
        if isinstance(found, dict) and isinstance(found.get("recipe"), dict):
            # A stage written before a Recipe setting existed ran with its default.
            defaults = json.loads(json.dumps(dataclasses.asdict(Recipe())))
            found = {**found, "recipe": {**defaults, **found["recipe"]}}
        if found != self.signature:
            raise _bad("workdir", self.workdir, f"a folder without stages of other compress() "
                       f"arguments (its {stage} stage ran with {found}, this call has "
                       f"{self.signature}); use another folder", error=UsageError)
        return True

    def record(self, stage: str) -> Dict[str, Any]:
        with open(self._paths(stage)[1]) as f:
            return json.load(f)

    def _seed_states(self) -> List[Any]:
        """The model's random layers' seed states (Dropout's): not in its weights."""
        weights = {id(w) for w in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights
                and v.name.endswith("seed_generator_state")]

    def restore(self, stage: str) -> Dict[str, Any]:
        """Loads the stage's weights and seed states into the model; returns its record."""
        self.model.load_weights(self._paths(stage)[0])
        record = self.record(stage)
        states = self._seed_states()
        if len(record.get("seed_states", ())) == len(states):  # later stages draw as if it ran
            for variable, value in zip(states, record["seed_states"]):
                variable.assign(np.asarray(value, dtype=variable.dtype))
        return record

    def save(self, stage: str, record: Dict[str, Any]) -> None:
        """Saves the model's weights and ``record``, each atomically (weights first)."""
        if not self.workdir:
            return
        weights, meta = self._paths(stage)
        with atomic_path(weights) as tmp:
            self.model.save_weights(tmp)
        seeds = [np.asarray(v).tolist() for v in self._seed_states()]
        write_json(meta, {**record, "seed_states": seeds, "signature": self.signature})


def _held(workdir: Optional[str]):
    """The lock of ``workdir`` while a call writes its stages there (nothing without one).

    Raises:
        ValueError: naming ``workdir``, if another living process holds it.
    """
    return RunDir(workdir, "workdir", flag=False).locked() if workdir else contextlib.nullcontext()


def _fit(model, optimizer, loss, metrics, train, validation, epochs, steps, callbacks, verbose):
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    history = model.fit(train, validation_data=validation, epochs=epochs,
                        steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                        shuffle=False)  # the dataset shuffles itself
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _not_normalized(trained, model, predicate=None) -> List[Any]:
    """``trained``'s trainable variables, less ``model``'s kernels that a normalization follows."""
    kernels = compressible_kernels(model, predicate)
    normalized = {id(kernels[i].variable) for i in following_normalization(model, kernels)}
    return [v for v in trained.trainable_variables if id(v) not in normalized]


def _default_dense_epochs(stages, model, train, loss, epochs) -> Tuple[int, Optional[float]]:
    """Epochs of dense training first when the call leaves it open: a finished dense
    stage's, else ``epochs // 4`` (leaving one per later stage) for a model whose loss
    is near chance (untrained), else 0; and the model's loss on the training batches
    where it was measured (else None)."""
    if stages.done("dense"):
        if _cross_entropy(loss) is not None:  # the read of the uninterrupted call's check
            skip_iterations(train, 1)
        return stages.record("dense")["epochs"], None
    untrained, train_loss = _is_untrained(model, train, loss)
    dense_epochs = min(max(1, epochs // 4), epochs - _MIN_EPOCHS) if untrained else 0
    if untrained and dense_epochs:
        logging.warning("The model's loss is near chance (untrained): %d of the %d epochs "
                        "train it densely first.", dense_epochs, epochs)
    elif untrained:
        logging.warning("The model's loss is near chance (untrained) and %d epochs leave "
                        "none to train it first: expect a poor model; give more epochs, or "
                        "a trained model.", epochs)
    elif untrained is None:
        logging.info("compress(): cannot tell whether the model is trained (not a "
                     "cross-entropy classifier); pass dense_epochs to train it first.")
    return dense_epochs, train_loss


def _admm_stage(model, admm, recipe, loss, metrics, train, validation, epochs, steps,
                callbacks, verbose) -> Dict[str, Any]:
    """Stage 1: ``epochs`` of ADMM (SGD on a cosine from ``recipe.admm_lr``, wrapped by
    :class:`ADMMOptimizer`) learn the allocation in ``admm``'s state.

    Returns:
        The stage's record: learned ``bits`` and ``nnz`` per layer, ``budget_bits``,
        the fit's ``history``.
    """
    schedule = keras.optimizers.schedules.CosineDecay(recipe.admm_lr, epochs * steps)
    optimizer = ADMMOptimizer(keras.optimizers.SGD(schedule, momentum=recipe.admm_momentum),
                              admm, weight_decay=recipe.admm_weight_decay)
    history = _fit(model, optimizer, loss, metrics, train, validation, epochs, steps,
                   [admm, keras.callbacks.TerminateOnNaN()] + list(callbacks), verbose)
    state = admm.state
    bits = [int(b) for b in state.current_bits]
    nnz = [int(np.count_nonzero(w)) for w in state.sparse_weights()]
    logging.info("ADMM allocation: bits %s, nonzeros %s", bits, nnz)
    return {"bits": bits, "nnz": nnz, "budget_bits": float(state.budget_bits),
            "history": history}


def _finetune_stages(model, bits, nnz, split, recipe, loss, metrics, train, validation, steps,
                     callbacks=(), verbose="auto", predicate=None, teacher=None,
                     learning_rate=None, temperature=None):
    """Stages 2-3, training ``model`` from its weights now: gradual pruning to ``nnz`` in
    full precision (``split["float"]`` epochs, ``split["prune"]`` of them shrinking the
    support), then quantized to ``bits`` (``split["quant"]``); Adam on a cosine from
    ``recipe.finetune_lr`` (or on ``learning_rate``, a schedule for experiments) with
    ``recipe.finetune_weight_decay``, distilled from ``teacher`` when given (at
    ``temperature``, default ``recipe.finetune_kdtemp``); the centres
    trained by gradient with ``recipe.finetune_train_centres`` (Adam wrapped to pass the
    gradients).

    Returns:
        (the compressed copy, the fit's history).
    """
    finetune = QuantizedFinetuneCallback(weightbits=bits, reserve_zero=False, predicate=predicate,
                                         float_epochs=split["float"], prune_to=nnz,
                                         prune_epochs=split["prune"],
                                         train_centres=recipe.finetune_train_centres)
    epochs = split["float"] + split["quant"]
    schedule = learning_rate
    if schedule is None:
        schedule = keras.optimizers.schedules.CosineDecay(recipe.finetune_lr, epochs * steps)
    if temperature is None:
        temperature = recipe.finetune_kdtemp
    trained = Distiller(model, teacher, temperature) if teacher else model
    optimizer = keras.optimizers.Adam(schedule, weight_decay=recipe.finetune_weight_decay or None)
    if recipe.finetune_weight_decay and recipe.finetune_decay_scope == "normalized":
        optimizer.exclude_from_weight_decay(var_list=_not_normalized(trained, model, predicate))
    if recipe.finetune_train_centres:  # the wrapper hands the kernels' gradients to the callback
        optimizer = ADMMOptimizer(optimizer)
    history = _fit(trained, optimizer, loss, metrics, train, validation,
                   epochs, steps, [finetune, keras.callbacks.TerminateOnNaN()] + list(callbacks),
                   verbose)
    return finetune.finalize(), history


def compress(
    model: keras.Model,
    train_data,
    validation_data=None,
    *,
    target_rate: Optional[float] = None,
    nnz_budget: Optional[float] = None,
    bit_budget: Optional[float] = None,
    epochs: int = 32,
    loss: Any = None,
    metrics: Sequence[Any] = ("accuracy",),
    batch_size: int = 256,
    steps_per_epoch: Optional[int] = None,
    dense_epochs: Optional[int] = None,
    recipe: Optional[Recipe] = None,
    predicate=None,
    seed: Optional[int] = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    workdir: Optional[str] = None,
    verbose: Union[str, int] = "auto",
) -> CompressionResult:
    """Compresses ``model`` to a size budget: ADMM, gradual pruning, quantized fine-tuning.

    Args:
        model: a Keras model (Sequential, Functional or subclassed), ideally
            trained. It is not changed where it can be copied from its config;
            a subclassed model without ``get_config`` is trained in place.
        train_data: a ``tf.data.Dataset`` of (x, y) or (x, y, sample_weight)
            batches, or an (x, y) tuple of arrays (batched by ``batch_size``,
            shuffled).
        validation_data: the same kinds, or None; each epoch is validated on
            the model as it would ship (finalised, or quantized).
        target_rate: compression rate of the kernels against float32 (e.g.
            533 for 533x); the split into nonzeros and bits is chosen
            (:func:`split_budget`). Give it, or both budgets below.
        nnz_budget: fraction of nonzeros, in (0, 1] (with ``bit_budget``).
        bit_budget: average bits per nonzero, in [1, 8] (with ``nnz_budget``).
        epochs: total epochs of all stages, >= 3, split by
            :meth:`Recipe.split` (32: the benchmark's 14 + 14 + 4).
        loss: the loss (default: the one ``model`` is compiled with).
        metrics: metrics to report.
        batch_size: batch size for array data.
        steps_per_epoch: batches per epoch (default: the dataset's length).
        dense_epochs: epochs of dense training first, taken from ``epochs``;
            None: ``epochs // 4`` (at least 1, leaving 3) if the model's
            loss is near chance (an untrained classifier), else 0.
        recipe: the stages' settings (default: :class:`Recipe`'s).
        predicate: ``f(layer, variable) -> bool | None`` choosing the
            compressed weights, as in ``compressible_kernels``.
        seed: seeds Keras, NumPy and TF (and the shuffling) when given.
        callbacks: more Keras callbacks for every stage's ``fit`` (e.g.
            ``TensorBoard``, ``CSVLogger(append=True)``).
        workdir: a folder where each finished stage leaves its weights
            (``stage_dense.weights.h5``, ``stage_admm.weights.h5`` and
            ``stage_admm.json``, the learned allocation); a call with the same
            folder and arguments skips the stages found there (an interrupted
            stage runs again from its start). The call holds the folder's
            ``.lock`` meanwhile. None: nothing is written.
        verbose: Keras ``fit`` verbosity ("auto": progress bars).

    Returns:
        A :class:`CompressionResult`; ``result.report.within_budget`` is True.

    Raises:
        ValueError: on invalid arguments (before any training; a dataset of
            unbatched examples for a model with known inputs too), if another
            living process writes in ``workdir``, or if the budget cannot give
            every compressed layer one weight per output; a ``UsageError`` (a
            ``ValueError``) if ``workdir`` holds stages of other arguments.

    Example:
        >>> result = sqjl_tf.compress(model, (x_train, y_train), (x_test, y_test),
        ...                           target_rate=533, epochs=32)
        >>> print(result.report)
        >>> result.model.save("compressed.keras")
    """
    nnz_budget, bit_budget = _resolve_budget(target_rate, nnz_budget, bit_budget)
    if not (isinstance(epochs, (int, np.integer)) and epochs >= _MIN_EPOCHS):
        raise _bad("epochs", epochs, f"an integer >= {_MIN_EPOCHS} (one per stage)")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise _bad("batch_size", batch_size, "an integer >= 1")
    if dense_epochs is not None and not (isinstance(dense_epochs, (int, np.integer))
                                         and 0 <= dense_epochs <= epochs - _MIN_EPOCHS):
        raise _bad("dense_epochs", dense_epochs, f"None or an integer in [0, epochs - "
                   f"{_MIN_EPOCHS}] = [0, {epochs - _MIN_EPOCHS}]")
    if loss is None:
        loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
        if loss is None:
            raise _bad("loss", None, "a Keras loss (the model is not compiled with one)")
    recipe = recipe or Recipe()
    if not isinstance(recipe, Recipe):
        raise _bad("recipe", recipe, "a sqjl_tf.Recipe or None")
    ADMMConfig(nnz_budget=nnz_budget, bit_budget=bit_budget)  # validates the budget now
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    train = _as_dataset(train_data, "train_data", batch_size, True, seed)
    validation = _as_dataset(validation_data, "validation_data", batch_size, False, None)
    steps = _steps(train, steps_per_epoch)

    for data, name in ((train, "train_data"), (validation, "validation_data")):
        _check_batched(model, data, name, batch_size)
    if not model.weights:  # unbuilt: built on one batch, as fit would
        model(next(iter(train))[0])
    working = uncompiled_copy(model)
    if working is None:  # not rebuildable from its config: trained in place
        working = model
        if recipe.finetune_kdtemp:
            raise _bad("recipe", recipe, "finetune_kdtemp=0 or None for a model that cannot "
                       "be copied from its config (the distillation teacher is such a copy)")
        logging.warning("%s cannot be copied from its config: compress() trains it in place.",
                        model.name)
    history: Dict[str, Dict[str, List[float]]] = {}
    signature = {"nnz_budget": nnz_budget, "bit_budget": bit_budget, "epochs": int(epochs),
                 "recipe": dataclasses.asdict(recipe), "seed": seed}
    with _held(workdir):  # no other process writes its stages meanwhile
        stages = _Stages(workdir, working, signature)
        finetuned = stages.done("finetune")  # then nothing trains: no data order to keep
        train_loss = None  # the starting model's loss on training data, where measured
        if dense_epochs is None:
            dense_epochs, train_loss = _default_dense_epochs(stages, working, train, loss, epochs)
        callbacks = list(callbacks)
        if dense_epochs and stages.done("dense"):
            history["dense"] = stages.restore("dense")["history"]
            if not finetuned:  # later stages read as if it had run
                skip_fit(train, dense_epochs, steps)
        elif dense_epochs:
            history["dense"] = _fit(working, keras.optimizers.Adam(recipe.finetune_lr), loss,
                                    metrics, train, validation, dense_epochs, steps, callbacks,
                                    verbose)
            stages.save("dense", {"epochs": int(dense_epochs), "history": history["dense"]})
        # The distillation teacher: the model as ADMM starts from it (before a restored stage);
        # none needed when the fine-tuning it teaches is already done.
        if dense_epochs:  # its last epoch's (training-mode) loss: no pass over the data
            train_loss = history["dense"]["loss"][-1]
        kdtemp = 0.0
        if not finetuned:
            kdtemp = _distillation_temperature(recipe, working, model, train, validation, loss,
                                               train_loss)
        teacher = uncompiled_copy(working) if kdtemp else None
        split = recipe.split(epochs - dense_epochs)
        split["dense"] = int(dense_epochs)
        projint, dualint = recipe.intervals(steps)
        logging.info("compress(): budget nnz %.4g x %.3g bits (%.1fx); epochs %s; projections "
                     "every %d batches, dual updates every %d.", nnz_budget, bit_budget,
                     32.0 / (nnz_budget * bit_budget), split, projint, dualint)

        # 1. ADMM learns the allocation.
        if stages.done("admm"):
            record = stages.restore("admm")
            logging.info("compress(): the ADMM stage is done in %s: allocation bits %s, "
                         "nonzeros %s", workdir, record["bits"], record["nnz"])
            if not finetuned:
                skip_fit(train, split["admm"], steps)
        else:
            admm = ADMMCallback(nnz_budget=nnz_budget, bit_budget=bit_budget, rho=recipe.rho,
                                rho_growth=recipe.rho_growth, projint=projint, dualint=dualint,
                                importance=recipe.importance, predicate=predicate,
                                per_layer_logs=False)
            record = _admm_stage(working, admm, recipe, loss, metrics, train, validation,
                                 split["admm"], steps, callbacks, verbose)
            stages.save("admm", record)
        bits, nnz, budget = record["bits"], record["nnz"], record["budget_bits"]
        history["admm"] = record["history"]

        # 2-3. From ADMM's trained weights: gradual pruning in full precision, then quantized.
        if finetuned:
            finished = stages.restore("finetune")
            history["finetune"] = finished["history"]
            kdtemp = float(finished.get("kdtemp", recipe.finetune_kdtemp or 0.0))
            compressed = uncompiled_copy(working) or working
            logging.info("compress(): the fine-tuning stage is done in %s.", workdir)
        else:
            compressed, history["finetune"] = _finetune_stages(
                working, bits, nnz, split, recipe, loss, metrics, train, validation, steps,
                callbacks, verbose, predicate=predicate, teacher=teacher, temperature=kdtemp)
            stages.save("finetune", {"history": history["finetune"], "kdtemp": kdtemp})
        compressed.sqjl_budget_bits = budget
        report = compression_report(compressed, predicate=predicate)
        if not report.within_budget:  # an invariant of the fine-tuning callback
            raise RuntimeError(f"compress() produced a model over its budget:\n{report}")
        names = [k.name for k in compressible_kernels(compressed, predicate)]
        return CompressionResult(model=compressed, report=report, bits=bits, nnz=nnz, layers=names,
                                 history=history, budget_bits=budget, epochs=split,
                                 kdtemp=kdtemp)
