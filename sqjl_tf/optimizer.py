"""ADMMOptimizer: a Keras 3 optimizer wrapper for the ADMM primal update.

After ``keras.optimizers.LossScaleOptimizer``: it wraps any inner optimizer,
delegates ``build``, ``variables``, ``learning_rate`` and ``iterations`` to it,
and adds, per compressible kernel W with duplicate V and dual U (owned by an
:class:`~sqjl_tf.admm.ADMMState`, usually through the ``ADMMCallback``):

* ``prox=True``: after the inner step, the proximal map of the augmented term,
  ``W <- (W + beta (V - U)) / (1 + beta)``, ``beta = lr * rho``;
* ``prox=False``: the augmented term's gradient ``rho (W - V + U)`` added to
  W's gradient before the inner step;
* ``weight_decay``: the reference's L2 (``grad += wd * W``) on kernels and
  BatchNorm scales, not on biases (not decoupled decay);
* with ``importance="fisher"``: the moving average of each kernel's squared
  loss gradient, for the sparse projection;
* ``non_finite_steps``: a count of the steps whose gradients held NaN/inf (the
  check ``LossScaleOptimizer`` makes), read by ``guards.NonFiniteGuard`` after
  each batch, so that a NaN gradient is caught even while the loss is finite.

Terms added to gradients are divided by the number of replicas in sync: the
inner optimizer all-reduces (sums) the replicas' gradients, and each replica
adds the same term. The prox runs after the inner update, on the synced
weights, once per variable through the strategy's ``extended.update``.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

_DECAYED_SUFFIXES = ("kernel", "depthwise_kernel", "pointwise_kernel", "gamma", "embeddings")


def _decayed(variable) -> bool:
    """The reference decays parameters named "weight": kernels and BN scales."""
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0] in _DECAYED_SUFFIXES


@keras.saving.register_keras_serializable(package="sqjl_tf")
class ADMMOptimizer(keras.optimizers.Optimizer):
    """Wraps an optimizer with the ADMM primal update and L2 weight decay.

    Args:
        inner_optimizer: any Keras 3 optimizer (its own ``weight_decay`` should
            be None; use this wrapper's for the reference's L2).
        admm: the ``ADMMCallback`` (or an ``ADMMState``) that owns V and U;
            None gives a plain optimizer with L2 decay.
        weight_decay: L2 coefficient added to gradients of kernels and
            BatchNorm scales (the reference's ``--wd``).
        gclip: if > 0, clip every gradient by its infinity norm to this value
            (the reference's ``--gclip``).
        name: optimizer name.

    Example:
        >>> cb = sqjl_tf.ADMMCallback(nnz_budget=0.02, bit_budget=3, rho=0.05)
        >>> opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01, momentum=0.9), cb)
        >>> model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
        >>> model.fit(x, y, epochs=3, callbacks=[cb])
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        admm=None,
        weight_decay: float = 0.0,
        gclip: float = 0.0,
        name: Optional[str] = None,
        **kwargs,
    ):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise ValueError(
                "Invalid value for argument `inner_optimizer`. "
                f"Received: {inner_optimizer!r}. Expected a keras.optimizers.Optimizer."
            )
        if not (float(weight_decay) >= 0):
            raise ValueError(
                f"Invalid value for argument `weight_decay`. Received: {weight_decay}. "
                "Expected a float >= 0."
            )
        if not (float(gclip) >= 0):
            raise ValueError(
                f"Invalid value for argument `gclip`. Received: {gclip}. Expected a float >= 0."
            )
        kwargs.pop("learning_rate", None)
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        self.inner_optimizer = inner_optimizer
        self.admm = admm
        self._admm_lost = False  # set by from_config when the saved optimizer had a state
        self.l2 = float(weight_decay)
        self.gclip = float(gclip)
        self._gradient_taps = []

    def add_gradient_tap(self, tap) -> None:
        """Registers ``tap(variable, gradient)``, called in every step.

        ``gradient`` is the loss gradient of a trainable variable, summed over
        replicas, before L2 and the ADMM term (what
        ``QuantizedFinetuneCallback(train_centres=True)`` sums per centre).
        Register before the first step: taps are traced into the train step.

        Args:
            tap: a callable of (variable, gradient) doing TensorFlow ops.
        """
        self._gradient_taps.append(tap)

    # ------------------------------------------------------------ delegation
    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        super().build(var_list)
        # A plain tf.Variable, outside ``variables``: a diagnostic counter that
        # the guard compares between batches, not state a checkpoint restores.
        with tf.init_scope():
            self._non_finite_steps = tf.Variable(
                0.0, trainable=False, name="non_finite_steps",
                synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

    @property
    def non_finite_steps(self):
        """Steps whose gradients held NaN/inf (a ``tf.Variable``; None before ``build``)."""
        return getattr(self, "_non_finite_steps", None)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.learning_rate = learning_rate
        else:  # during the base constructor
            keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # ------------------------------------------------------------------ step
    def _state(self):
        state = getattr(self.admm, "state", self.admm)
        if state is None or not getattr(state, "duplicates", None):
            return None  # not started yet, or prune-only: no V/U
        return state

    # Plain Python over the variables, no tensor-dependent branch: traced as written, without
    # AutoGraph's conversion (a tenth of a small model's tracing).
    @tf.autograph.experimental.do_not_convert
    def apply(self, grads, trainable_variables=None):
        if self._admm_lost and self.admm is None:
            raise RuntimeError(
                "This ADMMOptimizer was saved while bound to an ADMM run, and a saved model "
                "does not carry the run's ADMM state (duplicates, duals, bit widths), so it "
                "cannot resume ADMM by itself. Attach the run's callback "
                "(`model.optimizer.admm = callback`, restored from the run's checkpoint, and "
                "pass it to fit), or compile the model with a plain optimizer to train it "
                "without ADMM.")
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        variables = list(trainable_variables or self._trainable_variables)
        grads = list(grads)
        finite = [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
        if finite:
            self._non_finite_steps.assign_add(
                tf.cast(tf.logical_not(tf.reduce_all(tf.stack(finite))), tf.float32))
        self._accumulate_fisher(grads, variables)
        self._call_taps(grads, variables)
        state = self._state()
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        lr = tf.convert_to_tensor(self.inner_optimizer.learning_rate)  # before the step
        for i, (g, v) in enumerate(zip(grads, variables)):
            if g is None:
                continue
            if self.gclip > 0:
                g = g * tf.minimum(1.0, self.gclip / (tf.reduce_max(tf.abs(g)) + 1e-12))
            if self.l2 > 0 and _decayed(v):
                g = g + (self.l2 / replicas) * v
            if state is not None and not state.config.prox:
                j = state.index_of(v)
                if j is not None:
                    penalty = v - state.duplicates[j] + state.duals[j]
                    g = g + (tf.cast(state.rho, g.dtype) / replicas) * penalty
            grads[i] = g
        self.inner_optimizer.apply(grads, trainable_variables)
        if state is not None and state.config.prox:
            self._prox(state, variables, tf.cast(lr, tf.float32) * state.rho)

    def _accumulate_fisher(self, grads, variables):
        state = getattr(self.admm, "state", self.admm)
        if state is None or not getattr(state, "fisher", None):
            return
        for g, v in zip(grads, variables):
            j = state.index_of(v) if g is not None else None
            if j is not None:  # the loss gradient, before L2 and penalty
                state.accumulate_fisher(j, _global_gradient(g))

    def _call_taps(self, grads, variables):
        if not self._gradient_taps:
            return
        for g, v in zip(grads, variables):
            if g is not None:
                g = _global_gradient(g)
                for tap in self._gradient_taps:
                    tap(v, g)

    def _prox(self, state, variables, beta):
        triples = []
        for v in variables:
            j = state.index_of(v)
            if j is not None:
                raw = v.value if isinstance(v, keras.Variable) else v
                triples.append((raw, state.duplicates[j], state.duals[j]))

        def prox(w, v, u):
            return w.assign((w + beta * (v - u)) / (1.0 + beta))

        def update(distribution, triples):
            for w, v, u in triples:
                distribution.extended.update(w, prox, args=(v, u), group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            update, tf.distribute.get_strategy(), triples
        )

    # ----------------------------------------------------------- serialising
    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "weight_decay": self.l2,
            "gclip": self.gclip,
            "bound_to_admm": self.admm is not None or self._admm_lost,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        bound = config.pop("bound_to_admm", False)
        optimizer = cls(inner, **config)
        optimizer._admm_lost = bool(bound)
        return optimizer


def _global_gradient(g):
    """``g`` summed over the replicas in sync (itself outside a multi-replica step)."""
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
        return replica.all_reduce(tf.distribute.ReduceOp.SUM, g)
    return g


def _build_before_fit(model) -> None:
    """Builds ``model``'s optimizer on its trainable variables, if ``fit`` has not.

    Without a distribution strategy, ``fit`` leaves the optimizer to build
    itself in the first step: its variables are then made while the step is
    traced, and TensorFlow traces the step a second time. Built here (at
    ``on_train_begin``), the step is traced once.
    """
    optimizer = getattr(model, "optimizer", None)
    variables = model.trainable_variables
    if optimizer is not None and not optimizer.built and variables:
        optimizer.build(variables)
