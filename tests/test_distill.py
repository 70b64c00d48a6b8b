"""Knowledge distillation: the loss formula, frozen teacher, student-only tracking."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sqjl_tf
from sqjl_tf.distill import Distiller, distillation_term

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _task(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype("float32")
    y = np.argmax(x @ rng.standard_normal((8, 3)), 1).astype("int32")
    return x, y


def _model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )


_TEACHER_WEIGHTS = []


def _teacher():
    """A pretrained teacher (trained once per session)."""
    teacher = _model(1)
    if not _TEACHER_WEIGHTS:
        x, y = _task()
        teacher.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
        teacher.fit(x, y, epochs=5, batch_size=128, verbose=0)
        _TEACHER_WEIGHTS.extend(teacher.get_weights())
    teacher.set_weights(_TEACHER_WEIGHTS)
    return teacher


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _numpy_loss(s, t, y, temperature):
    ce = -_log_softmax(s)[np.arange(len(y)), y].mean()
    if temperature == 0:
        return ce
    p = np.exp(_log_softmax(t / temperature))
    kd = -(p * _log_softmax(s / temperature)).sum(-1).mean()
    return ce + temperature * kd


@pytest.mark.parametrize("temperature", [0.0, 1.0, 4.0])
def test_loss_matches_formula(temperature):
    x, y = _task(n=6, seed=3)
    teacher, student = _model(1), _model(2)
    d = Distiller(student, teacher, temperature=temperature)
    d.compile(optimizer="sgd", loss=LOSS)
    s = student(x).numpy()
    t = teacher(x).numpy()
    got = float(d.compute_loss(x=x, y=y, y_pred=d(x), training=True))
    np.testing.assert_allclose(got, _numpy_loss(s, t, y, temperature), rtol=1e-5)
    # Evaluation reports the plain cross-entropy.
    plain = float(d.compute_loss(x=x, y=y, y_pred=d(x), training=False))
    np.testing.assert_allclose(plain, _numpy_loss(s, t, y, 0.0), rtol=1e-5)


def test_distillation_term_direct():
    t = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], "float32")
    s = np.array([[0.3, 0.1, 0.2], [2.0, 0.0, -1.0]], "float32")
    expected = _numpy_loss(s, t, np.zeros(2, int), 3.0) - _numpy_loss(s, t, np.zeros(2, int), 0)
    np.testing.assert_allclose(float(distillation_term(t, s, 3.0)), expected, rtol=1e-5)
    assert float(distillation_term(t, s, 0.0)) == 0.0
    w = np.array([1.0, 0.0], "float32")
    one = -(np.exp(_log_softmax(t[:1] / 3)) * _log_softmax(s[:1] / 3)).sum() * 3 / 2
    np.testing.assert_allclose(float(distillation_term(t, s, 3.0, w)), one, rtol=1e-5)


def test_gradient_flows_only_into_student():
    x, y = _task(n=8)
    teacher, student = _model(1), _model(2)
    d = Distiller(student, teacher, temperature=2.0)
    d.compile(optimizer="sgd", loss=LOSS)
    with tf.GradientTape() as tape:
        loss = d.compute_loss(x=x, y=y, y_pred=d(x, training=True), training=True)
    grads = tape.gradient(loss, d.trainable_variables + teacher.weights)
    n = len(d.trainable_variables)
    assert all(g is not None for g in grads[:n])
    assert all(g is None for g in grads[n:])


def test_tracking_student_only():
    teacher, student = _model(1), _model(2)
    d = Distiller(student, teacher, temperature=2.0)
    assert not teacher.trainable
    student_ids = {id(v) for v in student.weights}
    assert {id(v) for v in d.weights} == student_ids
    assert {id(v) for v in d.trainable_variables} == {id(v) for v in student.trainable_variables}
    kernels = sqjl_tf.compressible_kernels(d)
    assert [id(k.variable) for k in kernels] == [id(l.kernel) for l in student.layers]
    assert d.layers == [student]


def test_fit_teacher_frozen_student_learns():
    x, y = _task()
    teacher = _teacher()
    before = [w.copy() for w in teacher.get_weights()]
    student = _model(2)
    d = Distiller(student, teacher, temperature=4.0)
    d.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS, metrics=["accuracy"])
    acc0 = d.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    hist = d.fit(x, y, epochs=4, batch_size=64, verbose=0)
    acc1 = d.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert acc1 > max(acc0, 0.8)
    # The distiller's predictions are the student's.
    np.testing.assert_allclose(d.predict(x[:5], verbose=0), student(x[:5]).numpy(), rtol=1e-5)


def test_with_admm_callback():
    x, y = _task()
    teacher = _teacher()
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    d = Distiller(student, teacher, temperature=2.0)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.3, bit_budget=3, rho=0.05)
    d.compile(
        optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), cb), loss=LOSS
    )
    d.fit(x, y, epochs=1, batch_size=128, verbose=0, callbacks=[cb])
    assert [k.variable.path for k in cb.state.kernels] == [
        k.variable.path for k in sqjl_tf.compressible_kernels(student)
    ]
    compressed = sqjl_tf.finalize_model(student, cb.state)
    report = sqjl_tf.compression_report(compressed, cb.state.budget_bits)
    assert report.within_budget
    # The teacher is untouched by the projections.
    assert all(np.count_nonzero(w) == w.size for w in teacher.get_weights()[::2])


def test_invalid_arguments():
    teacher, student = _model(1), _model(2)
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="`temperature`"):
            Distiller(student, teacher, temperature=bad)
    with pytest.raises(ValueError, match="`teacher`"):
        Distiller(student, None, temperature=2.0)
    with pytest.raises(ValueError, match="`teacher`"):
        Distiller(student, student, temperature=2.0)
    # T = 0 without a teacher is plain training.
    d = Distiller(student, None, temperature=0.0)
    d.compile(optimizer="sgd", loss=LOSS)
    x, y = _task(n=4)
    np.testing.assert_allclose(
        float(d.compute_loss(x=x, y=y, y_pred=d(x))), _numpy_loss(student(x).numpy(), None, y, 0),
        rtol=1e-5,
    )


def test_config_round_trip():
    teacher, student = _model(1), _model(2)
    d = Distiller(student, teacher, temperature=3.0)
    config = d.get_config()
    clone = Distiller.from_config(config)
    assert clone.temperature == 0.0 and clone.teacher is None
    with_teacher = Distiller.from_config({**config, "teacher": teacher})
    assert with_teacher.temperature == 3.0 and with_teacher.teacher is teacher
