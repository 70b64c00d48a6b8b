"""Learning-rate schedules of the reference (docs/ALGORITHM.md section 6).

:func:`parse_lr_schedule` turns the reference's ``lr_sched`` strings into Keras 3
``LearningRateSchedule`` objects, evaluated at every optimizer iteration
(``optimizer.iterations``, 0 for the first step): Keras's own ``CosineDecay``,
``PiecewiseConstantDecay`` and ``ExponentialDecay`` where their semantics are the
reference's, thin classes here where they differ (a constant, the cosine's start
after the warm-up, the warm-up's ramp, the plateau's relative threshold):

* ``""`` / ``"const"``: constant ``base_lr``;
* ``"cos"`` / ``"cos,min_lr"``: cosine, per iteration, from ``base_lr`` to
  ``min_lr`` (default 0) over all the iterations after the warm-up;
* ``"step,m1,m2,..."``: halved at each milestone epoch (the lr of epoch e is
  ``base_lr * 0.5 ** #{m_i <= e}``, epochs counted from 0);
* ``"exp,gamma"``: multiplied by ``gamma`` each epoch (``base_lr * gamma ** e``);
* ``"plat,factor,threshold"``: reduced on plateau. That depends on a metric,
  not on the iteration, so it returns a :class:`PlateauSchedule` whose value
  lives in a variable, lowered by the callback of its :meth:`PlateauSchedule.callback`
  (a :class:`PlateauCallback`).

A linear warm-up over ``warmup_epochs`` epochs (:class:`LinearWarmup`,
``lr * min(1, (t + 1) / warmup_steps)``) multiplies any of them. Epochs are
absolute: milestones and ``exp`` count epochs from the start of training, the
warm-up included; only the cosine starts its decay after the warm-up.

Example:
    >>> schedule = parse_lr_schedule("cos", base_lr=0.1, steps_per_epoch=100, epochs=30,
    ...                              warmup_epochs=1)
    >>> optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    >>> schedule = parse_lr_schedule("plat,0.5,0.01", 0.1, 100, 30)
    >>> model.compile(optimizer=keras.optimizers.SGD(schedule), loss=...)
    >>> model.fit(x, y, validation_data=val, callbacks=[schedule.callback()])
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import keras
import tensorflow as tf
from absl import logging

from sqjl_tf._state import variable_property
from sqjl_tf._usage import invalid_argument as _bad

_GRAMMAR = (
    "one of '' or 'const', 'cos' or 'cos,MIN_LR' (MIN_LR in [0, base_lr]), "
    "'step,M1,M2,...' (positive integer epochs), 'exp,GAMMA' (GAMMA > 0), "
    "'plat,FACTOR,THRESHOLD' (FACTOR in (0, 1), THRESHOLD >= 0)"
)

_SCHEDULES = keras.optimizers.schedules.LearningRateSchedule


def _check_positive(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise _bad(name, value, "a finite number > 0") from None
    if not (math.isfinite(out) and out > 0):
        raise _bad(name, value, "a finite number > 0")
    return out


def _inner(schedule) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule a wrapper wraps (its config when deserialized); checked."""
    if isinstance(schedule, dict):
        schedule = keras.saving.deserialize_keras_object(schedule)
    if not isinstance(schedule, _SCHEDULES):
        raise _bad("schedule", schedule, "a keras LearningRateSchedule")
    return schedule


def _step(step) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(step), tf.float32)


@keras.saving.register_keras_serializable(package="sqjl_tf")
class ConstantSchedule(_SCHEDULES):
    """A constant learning rate, as a schedule.

    Args:
        learning_rate: the value.

    Example:
        >>> float(ConstantSchedule(0.1)(5))
        0.1
    """

    def __init__(self, learning_rate: float):
        self.learning_rate = float(learning_rate)

    def __call__(self, step):
        del step
        return tf.constant(self.learning_rate, tf.float32)

    def get_config(self):
        return {"learning_rate": self.learning_rate}


@keras.saving.register_keras_serializable(package="sqjl_tf")
class DelayedSchedule(_SCHEDULES):
    """A schedule that starts after ``delay`` iterations, holding its first value until then.

    ``lr(t) = schedule(max(0, t - delay))``: the cosine decays over the iterations
    after the warm-up (the reference's), Keras's ``CosineDecay`` from its step 0.

    Args:
        schedule: the delayed ``LearningRateSchedule``.
        delay: iterations before it starts, >= 0.

    Example:
        >>> cos = keras.optimizers.schedules.CosineDecay(1.0, decay_steps=100)
        >>> round(float(DelayedSchedule(cos, delay=10)(60)), 6)
        0.5
    """

    def __init__(self, schedule, delay: int):
        self.schedule = _inner(schedule)
        self.delay = int(delay)

    def __call__(self, step):
        return self.schedule(tf.maximum(_step(step) - float(self.delay), 0.0))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "delay": self.delay}


@keras.saving.register_keras_serializable(package="sqjl_tf")
class PlateauSchedule(_SCHEDULES):
    """A rate held in a variable, lowered on plateau by a :class:`PlateauCallback`.

    A Keras optimizer built with a schedule refuses ``optimizer.learning_rate
    = ...``; this schedule keeps the current value in a ``tf.Variable`` that
    the compiled train step reads at every iteration, so a callback can lower it
    between epochs and the warm-up (a :class:`LinearWarmup` around it) still
    applies. The variable is not one of the optimizer's: the trainer saves it
    with its checkpoints (``variable``); the current value is also in
    ``get_config()``, and :meth:`set_value` sets it.

    Args:
        learning_rate: the initial value.
        factor: multiplier applied on each plateau, in (0, 1).
        threshold: relative improvement that counts as progress, >= 0.

    Example:
        >>> schedule = PlateauSchedule(0.1, factor=0.5, threshold=0.01)
        >>> model.fit(..., callbacks=[schedule.callback(monitor="val_loss")])
    """

    def __init__(self, learning_rate: float, factor: float = 0.1, threshold: float = 1e-4):
        self.factor = float(factor)
        self.threshold = float(threshold)
        self.variable = tf.Variable(
            float(learning_rate), dtype=tf.float32, trainable=False, name="plateau_lr"
        )

    @property
    def value(self) -> float:
        """The current learning rate (before warm-up)."""
        return float(self.variable.numpy())

    def set_value(self, learning_rate: float) -> None:
        """Sets the current learning rate."""
        self.variable.assign(float(learning_rate))

    def __call__(self, step):
        del step
        return tf.convert_to_tensor(self.variable)

    def callback(self, **kwargs) -> "PlateauCallback":
        """A :class:`PlateauCallback` that lowers this schedule.

        Args:
            **kwargs: ``monitor``, ``mode``, ``patience``, ``cooldown``,
                ``min_lr`` of :class:`PlateauCallback`.

        Returns:
            The callback, with this schedule's factor and threshold.
        """
        return PlateauCallback(self.factor, self.threshold, schedule=self, **kwargs)

    def get_config(self):
        return {"learning_rate": self.value, "factor": self.factor, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="sqjl_tf")
class LinearWarmup(_SCHEDULES):
    """Multiplies a schedule by a linear ramp over the first iterations.

    ``lr(t) = schedule(t) * min(1, (t + 1) / warmup_steps)``: the first step
    uses ``1 / warmup_steps`` of the rate, step ``warmup_steps - 1`` all of it.

    Args:
        schedule: the schedule ramped up (a ``LearningRateSchedule``).
        warmup_steps: length of the ramp in iterations, >= 1.

    Example:
        >>> float(LinearWarmup(ConstantSchedule(1.0), warmup_steps=4)(1))
        0.5
    """

    def __init__(self, schedule, warmup_steps: int):
        self.schedule = _inner(schedule)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        ramp = tf.minimum(1.0, (_step(step) + 1.0) / float(max(1, self.warmup_steps)))
        return self.schedule(step) * ramp

    def callback(self, **kwargs) -> "PlateauCallback":
        """The plateau callback of the wrapped :class:`PlateauSchedule`.

        Raises:
            ValueError: if the wrapped schedule is not a :class:`PlateauSchedule`.
        """
        if not isinstance(self.schedule, PlateauSchedule):
            raise _bad("schedule", self.schedule, "a PlateauSchedule to have a plateau callback")
        return self.schedule.callback(**kwargs)

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def _floats(spec: str, parts: List[str]) -> List[float]:
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise _bad("lr_sched", spec, _GRAMMAR) from None
    if not all(math.isfinite(v) for v in values):
        raise _bad("lr_sched", spec, _GRAMMAR)
    return values


def parse_lr_schedule(
    spec: Optional[str],
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0,
):
    """Builds the schedule of a reference ``lr_sched`` string.

    Args:
        spec: ``""``/``"const"``/None, ``"cos[,min_lr]"``, ``"step,m1,m2,..."``,
            ``"exp,gamma"`` or ``"plat,factor,threshold"`` (see the module doc).
        base_lr: the peak learning rate, > 0.
        steps_per_epoch: optimizer iterations per epoch, >= 1.
        epochs: number of training epochs, >= 1.
        warmup_epochs: length of the linear warm-up in epochs (may be
            fractional; 0: none); ``warmupT`` in the reference.

    Returns:
        A ``keras.optimizers.schedules.LearningRateSchedule`` to pass as
        ``learning_rate`` to a Keras optimizer: a :class:`LinearWarmup`
        around the schedule when there is a warm-up. For ``plat`` it is (or
        wraps) a :class:`PlateauSchedule`; add ``schedule.callback()`` to
        ``fit``'s callbacks.

    Raises:
        ValueError: if ``spec`` does not follow the grammar, or on invalid
            ``base_lr``, ``steps_per_epoch``, ``epochs`` or ``warmup_epochs``.

    Example:
        >>> s = parse_lr_schedule("step,2,4", base_lr=0.1, steps_per_epoch=10, epochs=6)
        >>> [round(float(s(t)), 4) for t in (0, 20, 45)]
        [0.1, 0.05, 0.025]
    """
    base_lr = _check_positive("base_lr", base_lr)
    if int(steps_per_epoch) != steps_per_epoch or int(steps_per_epoch) < 1:
        raise _bad("steps_per_epoch", steps_per_epoch, "an integer >= 1")
    if int(epochs) != epochs or int(epochs) < 1:
        raise _bad("epochs", epochs, "an integer >= 1")
    try:
        warmup = float(warmup_epochs)
    except (TypeError, ValueError):
        raise _bad("warmup_epochs", warmup_epochs, "a finite number >= 0") from None
    if not (math.isfinite(warmup) and warmup >= 0):
        raise _bad("warmup_epochs", warmup_epochs, "a finite number >= 0")
    steps_per_epoch, epochs = int(steps_per_epoch), int(epochs)
    total_steps = steps_per_epoch * epochs
    warmup_steps = int(round(warmup * steps_per_epoch))
    if warmup > 0 and warmup_steps == 0:
        warmup_steps = 1

    text = "" if spec is None else str(spec).strip()
    parts = [p.strip() for p in text.split(",")] if text else [""]
    kind, args = parts[0].lower(), parts[1:]
    if kind in ("", "const") and not args:
        schedule = ConstantSchedule(base_lr)
    elif kind == "cos" and len(args) <= 1:
        min_lr = _floats(text, args)[0] if args else 0.0
        if not 0 <= min_lr <= base_lr:
            raise _bad("lr_sched", text, _GRAMMAR)
        schedule = keras.optimizers.schedules.CosineDecay(
            base_lr, decay_steps=max(1, total_steps - warmup_steps), alpha=min_lr / base_lr)
        if warmup_steps:
            schedule = DelayedSchedule(schedule, warmup_steps)
    elif kind == "step" and args:
        values = _floats(text, args)
        if not all(v == int(v) and v >= 1 for v in values):
            raise _bad("lr_sched", text, _GRAMMAR)
        milestones = sorted(int(v) for v in values)  # lr of epoch e: base * 0.5 ** #{m <= e}
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            [m * steps_per_epoch - 1 for m in milestones],
            [base_lr * 0.5 ** i for i in range(len(milestones) + 1)])
    elif kind == "exp" and len(args) == 1:
        (gamma,) = _floats(text, args)
        if not gamma > 0:
            raise _bad("lr_sched", text, _GRAMMAR)
        schedule = keras.optimizers.schedules.ExponentialDecay(
            base_lr, decay_steps=steps_per_epoch, decay_rate=gamma, staircase=True)
    elif kind == "plat" and len(args) == 2:
        factor, threshold = _floats(text, args)
        if not (0 < factor < 1 and threshold >= 0):
            raise _bad("lr_sched", text, _GRAMMAR)
        schedule = PlateauSchedule(base_lr, factor, threshold)
    else:
        raise _bad("lr_sched", spec, _GRAMMAR)
    logging.info("lr_sched %r: %s, warm-up %d steps", text, type(schedule).__name__, warmup_steps)
    if warmup_steps > 0:
        return LinearWarmup(schedule, warmup_steps)
    return schedule


def _base_optimizer(optimizer):
    """Unwraps ADMMOptimizer / LossScaleOptimizer down to the optimizer holding the rate."""
    seen = set()
    while hasattr(optimizer, "inner_optimizer") and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.inner_optimizer
    return optimizer


class PlateauCallback(keras.callbacks.ReduceLROnPlateau):
    """Keras's ``ReduceLROnPlateau`` with the reference's semantics (``plat``).

    Where it differs from Keras's, it is PyTorch's ``ReduceLROnPlateau``, which
    the reference used: the monitored value improves if it is below ``best *
    (1 - threshold)`` (mode "min") or above ``best * (1 + threshold)`` (mode
    "max"), a relative threshold; the rate is multiplied by ``factor`` (not
    below ``min_lr``) after *more than* ``patience`` epochs without
    improvement, then ``cooldown`` epochs follow in which none are counted.
    The best value and the counters are variables, so that a run's checkpoint
    holds them (:meth:`checkpoint_variables`).

    The rate lowered is ``schedule``'s when one is given (a
    :class:`PlateauSchedule`, possibly inside a :class:`LinearWarmup`);
    otherwise the model's optimizer is unwrapped (``inner_optimizer``: the
    ADMMOptimizer, LossScaleOptimizer) and its rate must be a constant (a
    variable), which is assigned; with a :class:`PlateauSchedule` as the
    optimizer's ``learning_rate`` that schedule is found and lowered.

    Args:
        factor: multiplier in (0, 1).
        threshold: relative improvement that counts, >= 0.
        schedule: the :class:`PlateauSchedule` (or a :class:`LinearWarmup`
            around one) to lower; None: the optimizer's rate.
        monitor: key of the epoch logs (e.g. "val_loss", "val_accuracy").
        mode: "min", "max" or "auto" (max when the key contains "acc").
        patience: epochs without improvement tolerated.
        cooldown: epochs to wait after a reduction.
        min_lr: lower bound of the rate.
        reset_on_train_begin: start each ``fit`` afresh (best value and
            counters, as Keras's); False keeps them, for a ``fit`` that resumes
            a run with this state restored.

    Raises:
        ValueError: on an invalid argument.

    Example:
        >>> opt = keras.optimizers.SGD(0.1)
        >>> model.fit(x, y, validation_split=0.1, callbacks=[PlateauCallback(0.5, 0.01)])
    """

    def __init__(
        self,
        factor: float,
        threshold: float,
        schedule=None,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 10,
        cooldown: int = 0,
        min_lr: float = 0.0,
        reset_on_train_begin: bool = True,
    ):
        if not (math.isfinite(float(factor)) and 0 < float(factor) < 1):
            raise _bad("factor", factor, "a number in (0, 1)")
        if not (math.isfinite(float(threshold)) and float(threshold) >= 0):
            raise _bad("threshold", threshold, "a finite number >= 0")
        if mode not in ("auto", "min", "max"):
            raise _bad("mode", mode, "one of 'auto', 'min', 'max'")
        if int(patience) < 0 or int(cooldown) < 0:
            raise _bad("patience", (patience, cooldown), "patience and cooldown >= 0")
        if isinstance(schedule, LinearWarmup):
            schedule = schedule.schedule
        if schedule is not None and not isinstance(schedule, PlateauSchedule):
            raise _bad("schedule", schedule, "a PlateauSchedule (or a LinearWarmup around one)")
        # The state Keras's callback keeps (best, wait, cooldown_counter), in variables.
        self._best = tf.Variable(math.nan, dtype=tf.float64, trainable=False, name="plateau_best")
        self._wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_bad_epochs")
        self._cooldown = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_cooldown")
        # Keras reduces once ``wait >= patience``; PyTorch once ``bad epochs > patience``.
        super().__init__(monitor=monitor, factor=float(factor), patience=int(patience) + 1,
                         mode=("max" if "acc" in monitor else "min") if mode == "auto" else mode,
                         min_delta=0.0, cooldown=int(cooldown), min_lr=float(min_lr))
        self.threshold = float(threshold)
        self.schedule = schedule
        self.reset_on_train_begin = bool(reset_on_train_begin)

    wait = variable_property("_wait", int, "Epochs without improvement since the last "
                             "improvement or reduction.")
    cooldown_counter = variable_property("_cooldown", int, "Epochs of cooldown left.")

    @property
    def best(self) -> Optional[float]:
        """The best monitored value so far (None before the first)."""
        value = float(self._best.numpy())
        return None if math.isnan(value) else value

    @best.setter
    def best(self, value: Optional[float]) -> None:
        self._best.assign(math.nan if value is None else float(value))

    def checkpoint_variables(self) -> Dict[str, tf.Variable]:
        """The callback's state by name: the best value and the two counters.

        With the lowered rate itself (the :class:`PlateauSchedule`'s
        ``variable``), what a checkpoint needs to resume the schedule exactly.
        """
        return {"best": self._best, "bad_epochs": self._wait, "cooldown": self._cooldown}

    def _is_improvement(self, monitor_value, reference_value) -> bool:
        if reference_value is None:
            return True
        if self.mode == "min":
            return float(monitor_value) < reference_value * (1.0 - self.threshold)
        return float(monitor_value) > reference_value * (1.0 + self.threshold)

    def _reduce_optimizer_lr(self, optimizer, epoch, name="") -> bool:
        del optimizer, name  # the rate lowered is the schedule's, or the unwrapped optimizer's
        old = self.get_lr()
        new = max(old * self.factor, self.min_lr)
        if old - new <= 1e-8:  # PyTorch's eps
            return False
        self._set_lr(new)
        logging.info("Epoch %d: %s plateaued, learning rate %g -> %g.", epoch + 1, self.monitor,
                     old, new)
        return True

    def _target(self):
        if self.schedule is not None:
            return self.schedule
        optimizer = _base_optimizer(self.model.optimizer)
        rate = getattr(optimizer, "_learning_rate", None)
        if isinstance(rate, LinearWarmup):
            rate = rate.schedule
        if isinstance(rate, PlateauSchedule):
            return rate
        if isinstance(rate, _SCHEDULES):
            raise _bad(
                "optimizer",
                type(rate).__name__,
                "an optimizer with a constant learning rate or a PlateauSchedule "
                "(the rate of another schedule cannot be lowered)",
            )
        return optimizer

    def get_lr(self) -> float:
        """The current learning rate (before any warm-up)."""
        target = self._target()
        if isinstance(target, PlateauSchedule):
            return target.value
        return float(keras.ops.convert_to_numpy(target.learning_rate))

    def _set_lr(self, value: float) -> None:
        target = self._target()
        if isinstance(target, PlateauSchedule):
            target.set_value(value)
        else:
            target.learning_rate.assign(value)

    def on_train_begin(self, logs=None):
        if self.reset_on_train_begin:
            self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        self._target()  # another schedule's rate: refused before any epoch is counted
        super().on_epoch_end(epoch, logs)
        logs["lr_plateau"] = self.get_lr()


def plateau_callback(factor: float, threshold: float, schedule=None, **kwargs) -> PlateauCallback:
    """Shorthand for :class:`PlateauCallback` (``plat,factor,threshold``).

    Args:
        factor: multiplier in (0, 1).
        threshold: relative improvement that counts, >= 0.
        schedule: the :class:`PlateauSchedule` to lower (None: the optimizer's
            constant rate, or the PlateauSchedule it was built with).
        **kwargs: ``monitor``, ``mode``, ``patience``, ``cooldown``, ``min_lr``.

    Returns:
        The callback.

    Example:
        >>> cb = plateau_callback(0.5, 0.01, monitor="val_accuracy", patience=3)
    """
    return PlateauCallback(factor, threshold, schedule=schedule, **kwargs)


@keras.saving.register_keras_serializable(package="sqjl_tf")
class ScaledSchedule(_SCHEDULES):
    """Multiplies a schedule by a variable factor (lowered when a run recovers from NaN).

    Args:
        schedule: the wrapped ``LearningRateSchedule``.
        scale: initial factor (kept in a ``tf.Variable``, ``self.scale``).

    Example:
        >>> s = ScaledSchedule(ConstantSchedule(0.1))
        >>> s.scale.assign(0.5); float(s(0))
        0.05
    """

    def __init__(self, schedule, scale: float = 1.0):
        self.schedule = _inner(schedule)
        self.scale = tf.Variable(float(scale), trainable=False, dtype=tf.float32, name="lr_scale")

    def __call__(self, step):
        return self.schedule(step) * tf.cast(self.scale, tf.float32)

    def callback(self, **kwargs) -> "PlateauCallback":
        """The plateau callback of the wrapped schedule (see :class:`LinearWarmup`)."""
        return self.schedule.callback(**kwargs)

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "scale": float(self.scale.numpy()),
        }
