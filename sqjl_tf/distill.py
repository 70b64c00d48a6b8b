"""Knowledge distillation from the uncompressed model (docs/ALGORITHM.md section 5).

With ``kdtemp = T > 0`` the training loss is

    CE(student, y) + T * CE(softmax(teacher / T), log_softmax(student / T))

where the teacher is the uncompressed pretrained model, frozen, and
``CE(p, log_q) = -sum_k p_k log_q_k`` averaged over the batch.

:class:`Distiller` is a ``keras.Model`` that wraps the student: ``call`` is the
student's, so compiled metrics, ``evaluate`` and ``predict`` see the student,
and ``compute_loss`` (which Keras 3 hands ``x``) adds the distillation term
from ``teacher(x, training=False)``. The teacher is held outside Keras's
layer and variable tracking: the distiller's ``layers``, ``weights``,
``trainable_variables`` and checkpoints are the student's alone, and
``sqjl_tf.compressible_kernels(distiller)`` lists only the student's kernels,
so the ADMM callback and optimizer work unchanged on a distiller.

Example:
    >>> teacher = keras.models.load_model("pretrained.keras")
    >>> student = keras.models.clone_model(teacher); student.set_weights(teacher.get_weights())
    >>> distiller = Distiller(student, teacher, temperature=4.0)
    >>> cb = sqjl_tf.ADMMCallback(nnz_budget=0.02, bit_budget=3)
    >>> distiller.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01), cb),
    ...                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    >>> distiller.fit(train, epochs=30, callbacks=[cb])
    >>> compressed = sqjl_tf.finalize_model(distiller.student, cb.state)
"""

from __future__ import annotations

import math
from typing import Optional

import keras
import tensorflow as tf


def _check_temperature(temperature) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            "Invalid value for argument `temperature`. "
            f"Received: {temperature!r}. Expected a finite number >= 0 (0: no distillation)."
        )
    return value


def distillation_term(teacher_logits, student_logits, temperature: float, sample_weight=None):
    """The distillation term ``T * CE(softmax(t / T), log_softmax(s / T))``.

    Args:
        teacher_logits: teacher outputs (logits), shape ``[batch, classes]``.
        student_logits: student outputs (logits), same shape.
        temperature: T > 0.
        sample_weight: optional per-example weights ``[batch]``; the mean is
            ``sum(w * ce) / batch`` like Keras's "sum_over_batch_size".

    Returns:
        A scalar float32 tensor (0 when ``temperature`` is 0). No gradient
        flows into the teacher's logits.

    Example:
        >>> float(distillation_term([[0.0, 0.0]], [[0.0, 0.0]], 2.0))  # 2 * log 2
        1.386...
    """
    temperature = _check_temperature(temperature)
    if temperature == 0:
        return tf.constant(0.0, tf.float32)
    t = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    s = tf.cast(student_logits, tf.float32)
    target = tf.nn.softmax(t / temperature, axis=-1)
    ce = -tf.reduce_sum(target * tf.nn.log_softmax(s / temperature, axis=-1), axis=-1)
    if sample_weight is not None:
        ce = ce * tf.reshape(tf.cast(sample_weight, tf.float32), tf.shape(ce))
    return temperature * tf.reduce_mean(ce)


@keras.saving.register_keras_serializable(package="sqjl_tf")
class Distiller(keras.Model):
    """A student model trained with knowledge distillation from a frozen teacher.

    ``call`` runs the student; the compiled loss (cross-entropy with the labels;
    build it with ``from_logits=True`` since both models output logits) gets,
    during training, the distillation term of :func:`distillation_term` added.
    Evaluation reports the compiled loss alone, comparable with a model
    trained without distillation.

    The teacher is frozen (``trainable = False``, run with ``training=False``,
    its logits under ``stop_gradient``) and deliberately *not tracked*: it is
    stored with ``object.__setattr__``, so the distiller's weights, layers,
    checkpoints and ``compressible_kernels`` are the student's alone. Create
    the teacher under the same distribution strategy scope as the distiller.
    Save ``distiller.student`` (``model.save`` of the distiller stores the
    student and a config that needs the teacher passed back in).

    Args:
        student: the model trained (and compressed), outputting logits.
        teacher: the uncompressed pretrained model, outputting logits.
        temperature: T >= 0; 0 disables distillation (plain training).
        **kwargs: ``keras.Model`` arguments (``name``...).

    Raises:
        ValueError: on a negative or non-finite temperature, or models that
            are not Keras models, or the same model as student and teacher.

    Example:
        >>> distiller = Distiller(student, teacher, temperature=4.0)
        >>> distiller.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True), metrics=["accuracy"])
        >>> distiller.fit(x, y, epochs=3)
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: Optional[keras.Model] = None,
        temperature: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        temperature = _check_temperature(temperature)
        if not isinstance(student, keras.layers.Layer):
            raise ValueError(
                f"Invalid value for argument `student`. Received: {student!r}. "
                "Expected a Keras model."
            )
        if teacher is not None and not isinstance(teacher, keras.layers.Layer):
            raise ValueError(
                f"Invalid value for argument `teacher`. Received: {teacher!r}. "
                "Expected a Keras model or None."
            )
        if teacher is student:
            raise ValueError(
                "Invalid value for argument `teacher`. Received: the student itself. "
                "Expected a separate, frozen copy of the uncompressed model."
            )
        if temperature > 0 and teacher is None:
            raise ValueError(
                "Invalid value for argument `teacher`. Received: None. "
                f"Expected a teacher model when temperature={temperature} > 0."
            )
        self.student = student
        self.temperature = temperature
        if teacher is not None:
            teacher.trainable = False
        # Not tracked: keeps the teacher's variables out of weights, checkpoints,
        # the optimizer and compressible_kernels().
        object.__setattr__(self, "_teacher", teacher)
        if student.built:  # usable at once (compressible_kernels, callbacks before fit)
            self.built = True

    @property
    def teacher(self) -> Optional[keras.Model]:
        """The frozen teacher (not tracked by the distiller)."""
        return self._teacher

    def build(self, input_shape):
        if not self.student.built:
            self.student.build(input_shape)
        if self._teacher is not None and not self._teacher.built:
            self._teacher.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss, plus the distillation term when training.

        Args:
            x: the inputs (the teacher's).
            y: the labels.
            y_pred: the student's logits.
            sample_weight: optional per-example weights.
            training: whether this is a training step (the term is added only then).

        Returns:
            The scalar loss.
        """
        loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        if not training or self.temperature == 0 or self._teacher is None:
            return loss
        teacher_logits = self._teacher(x, training=False)
        kd = distillation_term(teacher_logits, y_pred, self.temperature, sample_weight)
        return loss + tf.cast(kd, loss.dtype)

    def get_config(self):
        return {
            "name": self.name,
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuilds a distiller; pass ``teacher`` in ``config`` when temperature > 0.

        Without a teacher the result has temperature 0 (the student alone),
        which is what cloning for finalisation needs.
        """
        config = dict(config)
        student = keras.saving.deserialize_keras_object(
            config.pop("student"), custom_objects=custom_objects
        )
        teacher = config.pop("teacher", None)
        if teacher is None:
            config["temperature"] = 0.0
        return cls(student, teacher, **config)
