"""Fine-tuning a compressed model: frozen mask and widths, straight-through, size."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fakedata
import sqjl_tf
from sqjl_tf import finetune, projections
from sqjl_tf.finetune import QuantizedFinetuneCallback, finetune_finalize, quantize_tf

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _task(n=1024, seed=0):
    return fakedata.linear_task(n, seed)


def _model(seed=0):
    return fakedata.mlp(32, seed)


_CACHE = {}


def _compressed(bits=(2, 2), density=0.3):
    """A pretrained model, pruned to ``density`` and quantized with ``bits``."""
    key = (bits, density)
    if key not in _CACHE:
        x, y = _task()
        model = _model()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
        model.fit(x, y, epochs=6, batch_size=64, verbose=0)
        kernels = sqjl_tf.compressible_kernels(model)
        w = [k.variable.numpy() for k in kernels]
        budget = sum(b * int(np.ceil(density * a.size)) for a, b in zip(w, bits))
        w, _ = projections.sparse_projection(w, bits=list(bits), budget_bits=budget)
        w, _ = projections.quantize_with_bits(w, list(bits))
        for k, a in zip(kernels, w):
            k.variable.assign(a)
        _CACHE[key] = model.get_weights()
    model = _model()
    model.set_weights(_CACHE[key])
    return model


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=512), 1) == y))


def _kernels(model):
    return [k.variable.numpy() for k in sqjl_tf.compressible_kernels(model)]


def test_quantize_tf_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 7)).astype("float32")
    x[rng.random(x.shape) < 0.4] = 0
    centres = projections.codebook(x, 3)
    expected = projections.quantize(x, centres)
    padded = np.concatenate([centres, np.full(4, centres[-1], np.float32)])
    got = quantize_tf(tf.constant(x), tf.constant(padded)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_finetune_keeps_mask_bits_and_size_and_recovers_accuracy():
    x, y = _task()
    model = _compressed()
    start = _kernels(model)
    start_report = sqjl_tf.compression_report(model)
    acc0 = _accuracy(model, x, y)
    ft = QuantizedFinetuneCallback(refresh_per_epoch=4)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    hist = model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[ft])
    assert ft.initial_size_bits == start_report.size_bits
    assert [s.bits for s in ft.slots] == [s.bits for s in start_report.layers]
    for before, after, slot in zip(start, _kernels(model), ft.slots):
        assert np.all(after[before == 0] == 0)  # no new nonzero
        assert np.unique(after[after != 0]).size <= 2**slot.bits
    report = sqjl_tf.compression_report(model)
    assert report.size_bits <= start_report.size_bits
    assert hist.history["size_bits"][-1] == report.size_bits
    # The weights moved, and the quantized model is at least as accurate.
    assert any(not np.array_equal(a, b) for a, b in zip(start, _kernels(model)))
    acc1 = _accuracy(model, x, y)
    assert acc1 >= acc0 - 0.01, (acc0, acc1)
    # finalize(): a quantized copy.
    final = ft.finalize()
    assert final is not model
    for a, b in zip(_kernels(final), _kernels(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(_accuracy(final, x, y), acc1)


class _KernelProbe(keras.callbacks.Callback):
    """Records the kernels at each epoch end (after the callbacks before it)."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_epoch_end(self, epoch, logs=None):
        self.kernels.append(_kernels(self.model))


def test_float_epochs_train_in_full_precision_then_quantize():
    x, y = _task()
    model = _compressed()
    start = _kernels(model)
    start_size = sqjl_tf.compression_report(model).size_bits
    ft = QuantizedFinetuneCallback(refresh_per_epoch=2, float_epochs=2)
    probe = _KernelProbe()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[ft, probe])
    bits = [s.bits for s in ft.slots]
    # Epochs 1-2: full precision on the frozen support (more values than the width allows);
    # epoch 2 ends in full precision, so its checkpoint is the model it validated.
    for epoch in (0, 1):
        kernels = probe.kernels[epoch]
        assert any(np.unique(k[k != 0]).size > 2**b for k, b in zip(kernels, bits))
        for before, after in zip(start, kernels):
            assert np.all(after[before == 0] == 0)
    # Quantized from epoch 3 on; the final model fits its start size.
    for before, k, b in zip(start, probe.kernels[2], bits):
        assert np.all(k[before == 0] == 0)
        assert np.unique(k[k != 0]).size <= 2**b
    assert ft.quantizing
    assert sqjl_tf.compression_report(model).size_bits <= start_size


def test_fit_shorter_than_float_epochs_still_ends_quantized():
    x, y = _task(n=128)
    model = _compressed()
    start_size = sqjl_tf.compression_report(model).size_bits
    ft = QuantizedFinetuneCallback(float_epochs=5)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[ft])
    assert ft.quantizing
    for k, slot in zip(_kernels(model), ft.slots):
        assert np.unique(k[k != 0]).size <= 2**slot.bits
    assert sqjl_tf.compression_report(model).size_bits <= start_size


def test_without_reserved_zero_the_support_stays_exactly():
    """reserve_zero=False (--keep_support): no kept weight rounds to zero; widths hold."""
    x, y = _task(n=128)
    model = _compressed()
    start = _kernels(model)
    start_size = sqjl_tf.compression_report(model).size_bits
    ft = QuantizedFinetuneCallback(reserve_zero=False, float_epochs=1)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[ft])
    for before, after, slot in zip(start, _kernels(model), ft.slots):
        np.testing.assert_array_equal(after != 0, before != 0)
        assert np.unique(after[after != 0]).size <= 2**slot.bits
    assert sqjl_tf.compression_report(model).size_bits == start_size


def test_straight_through_update():
    """One SGD step: the shadow moves by the gradient taken at the quantized point."""
    x, y = _task(n=64)
    model = _compressed()
    ft = QuantizedFinetuneCallback(refresh_per_epoch=0)
    ft.build(model)
    shadows = [s.shadow.numpy() for s in ft.slots]
    masks = [s.mask.numpy() for s in ft.slots]
    lr = 0.1
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    kvars = [s.kernel.variable for s in ft.slots]
    grads = [g.numpy() for g in tape.gradient(loss, kvars)]
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=LOSS)
    model.optimizer.apply([tf.constant(g) for g in grads], kvars)
    ft.on_epoch_begin(0)
    ft.on_train_batch_end(0)
    for s, w0, m, g in zip(ft.slots, shadows, masks, grads):
        np.testing.assert_allclose(s.shadow.numpy(), np.where(m, w0 - lr * g, 0), atol=1e-6)
        expected = projections.quantize(s.shadow.numpy(), s.centres.numpy())
        np.testing.assert_array_equal(s.kernel.variable.numpy(), expected)


def test_full_refresh_is_lloyd_from_the_running_codebook():
    """The epoch-end refresh never raises the distortion and ends at a Lloyd fixed point."""
    model = _compressed(bits=(1, 2))
    ft = QuantizedFinetuneCallback(refresh_per_epoch=0)
    ft.build(model)
    rng = np.random.default_rng(0)
    for s in ft.slots:  # as if training had moved the shadows away from the codebook
        w = s.shadow.numpy()
        s.shadow.assign(np.where(w != 0, w * rng.uniform(0.5, 1.5, w.shape), 0).astype("float32"))

    def distortion(s, centres):
        w = s.shadow.numpy()
        w = w[s.mask.numpy() & (w != 0)]
        return float(np.sum((w - projections.quantize(w, centres)) ** 2))

    before = [distortion(s, s.centres.numpy()) for s in ft.slots]
    old = [s.centres.numpy() for s in ft.slots]
    ft.full_refresh()
    for s, d0, c0 in zip(ft.slots, before, old):
        c1 = s.centres.numpy()
        d1 = distortion(s, c1)
        assert d1 <= d0 * (1 + 1e-6)
        assert not np.array_equal(c0, c1)  # the codebook followed the shadows
        assert 0.0 in c1  # the reserved zero stays
        # A Lloyd fixed point (to the reference's tolerance).
        w = s.shadow.numpy()
        values = tf.constant(w[s.mask.numpy() & (w != 0)])
        c2 = finetune._lloyd(values, tf.constant(c1), True, 1).numpy()
        assert d1 - distortion(s, c2) <= 1e-3 * d1 + 1e-9
        np.testing.assert_array_equal(s.kernel.variable.numpy(),
                                      projections.quantize(s.shadow.numpy(), c1))


def test_from_pruned_float_model_with_weightbits():
    """A pruned, unquantized model gets the given widths (a comma string here)."""
    x, y = _task()
    model = _compressed()
    kernels = sqjl_tf.compressible_kernels(model)
    rng = np.random.default_rng(1)
    for k in kernels:  # un-quantize: jitter the nonzeros
        w = k.variable.numpy()
        k.variable.assign(np.where(w != 0, w + 0.01 * rng.standard_normal(w.shape), 0))
    start = sqjl_tf.compression_report(model)
    ft = QuantizedFinetuneCallback(weightbits="3,2")
    model.compile(optimizer=keras.optimizers.SGD(0.02, momentum=0.9), loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=128, verbose=0, callbacks=[ft])
    report = sqjl_tf.compression_report(model)
    assert all(s.bits <= b for s, b in zip(report.layers, [3, 2]))
    assert report.size_bits <= 3 * start.layers[0].nnz + 2 * start.layers[1].nnz
    assert report.size_bits <= start.size_bits


def test_weightbits_above_measured_are_lowered():
    model = _compressed(bits=(2, 2))
    ft = QuantizedFinetuneCallback(weightbits=[8, 1])
    ft.build(model)
    assert [s.bits for s in ft.slots] == [2, 1]


@pytest.mark.parametrize(
    "weightbits", [[4], [4, 4, 4], "4", [0, 4], [4, 9], [4, 2.5], "4,x", ["a", "b"]]
)
def test_weightbits_validation(weightbits):
    model = _compressed()
    with pytest.raises(ValueError, match="`weightbits`"):
        QuantizedFinetuneCallback(weightbits=weightbits).build(model)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="`refresh_per_epoch`"):
        QuantizedFinetuneCallback(refresh_per_epoch=-1)
    with pytest.raises(ValueError, match="`lloyd_iters`"):
        QuantizedFinetuneCallback(lloyd_iters=0)
    with pytest.raises(ValueError, match="`float_epochs`. Received: -1"):
        QuantizedFinetuneCallback(float_epochs=-1)
    with pytest.raises(RuntimeError):
        QuantizedFinetuneCallback().finalize()


def test_finetune_finalize():
    model = _compressed()
    kernels = sqjl_tf.compressible_kernels(model)
    rng = np.random.default_rng(2)
    for k in kernels:
        w = k.variable.numpy()
        k.variable.assign(np.where(w != 0, w + 0.01 * rng.standard_normal(w.shape), 0))
    out = finetune_finalize(model, weightbits=[1, 2])
    report = sqjl_tf.compression_report(out)
    assert [s.bits for s in report.layers] == [1, 2]
    for a, b in zip(_kernels(model), _kernels(out)):
        assert np.all(b[a == 0] == 0)
    with pytest.raises(ValueError, match="`weightbits`"):
        finetune_finalize(model, weightbits=[1])


def _centres(slot):
    return slot.centres.numpy()[: int(slot.used.numpy())]


def test_train_centres_steps_each_centre_by_its_summed_gradient():
    """One step: each centre moves against the sum of its weights' gradients (Adam: by lr)."""
    x, y = _task(n=64)
    model = _compressed()
    ft = QuantizedFinetuneCallback(train_centres=True, reserve_zero=False)
    ft.build(model)  # quantizes: the kernels are Q(W) now
    before = [_centres(s) for s in ft.slots]
    # Which centre each kept weight belongs to (nearest; ties to the lower one).
    owner = [np.argmin(np.abs(s.shadow.numpy()[..., None] - c), axis=-1)
             for s, c in zip(ft.slots, before)]
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    grads = tape.gradient(loss, [s.kernel.variable for s in ft.slots])
    lr = 1e-3
    model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(lr)), loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0, callbacks=[ft])
    for slot, g, c0, k in zip(ft.slots, grads, before, owner):
        kept = slot.mask.numpy()
        summed = np.array([g.numpy()[kept & (k == j)].sum() for j in range(c0.size)])
        expected = c0 - lr * np.sign(summed)  # Adam's first step: lr * g / (|g| + eps)
        np.testing.assert_allclose(_centres(slot), np.sort(expected), atol=1e-6)
        w = slot.kernel.variable.numpy()
        assert set(np.unique(w[w != 0])) <= set(_centres(slot).tolist())


def test_train_centres_keeps_support_and_widths_and_trains():
    x, y = _task()
    model = _compressed()
    start = _kernels(model)
    ft = QuantizedFinetuneCallback(train_centres=True, reserve_zero=False)
    model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.Adam(3e-3)), loss=LOSS)
    hist = model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[ft])
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    for before, after, slot in zip(start, _kernels(model), ft.slots):
        np.testing.assert_array_equal(after != 0, before != 0)
        assert np.unique(after[after != 0]).size <= 2**slot.bits


def test_train_centres_needs_the_gradient_passing_optimizer():
    x, y = _task(n=64)
    model = _compressed()
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=LOSS)
    with pytest.raises(ValueError, match="`train_centres`.*ADMMOptimizer"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[QuantizedFinetuneCallback(train_centres=True)])


def test_train_centres_in_a_later_fit_still_gets_the_gradients():
    """The train step of an earlier fit was traced without the tap: it is traced again."""
    x, y = _task(n=256)
    model = _compressed()
    model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(1e-3)), loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0,
              callbacks=[QuantizedFinetuneCallback(reserve_zero=False)])
    ft = QuantizedFinetuneCallback(train_centres=True, reserve_zero=False)
    ft.build(model)
    before = [_centres(s) for s in ft.slots]
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[ft])
    moved = [np.abs(_centres(s) - c).max() for s, c in zip(ft.slots, before)]
    assert min(moved) > 1e-4, moved  # no Lloyd refresh: only the gradient steps move them


def _float_model():
    """The pretrained model, unpruned and in full precision."""
    _compressed()  # fills the cache's training
    x, y = _task()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model


def test_prune_to_shrinks_the_support_gradually_then_quantizes():
    x, y = _task()
    model = _float_model()
    sizes = [k.size for k in _kernels(model)]
    targets = [n // 10 for n in sizes]
    ft = QuantizedFinetuneCallback(weightbits=[2, 2], reserve_zero=False, float_epochs=2,
                                   prune_to=targets, prune_epochs=2)
    probe = _KernelProbe()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
    model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[ft, probe])
    nnz = [[int(np.count_nonzero(k)) for k in epoch] for epoch in probe.kernels]
    # Epoch 1: half-way on the cubic schedule (1 - (1 - 1/2)^3 = 7/8 of the way).
    for n, size, target in zip(nnz[0], sizes, targets):
        assert n == round(target + (size - target) / 8)
    assert nnz[1] == targets == nnz[2]  # exactly the allocation from then on
    # The largest weights are the ones kept, and only they stay nonzero.
    assert all(np.unique(k[k != 0]).size > 4 for k in probe.kernels[1])  # still full precision
    for before, after in zip(probe.kernels[1], probe.kernels[2]):
        np.testing.assert_array_equal(after != 0, before != 0)
        assert np.unique(after[after != 0]).size <= 4


def test_prune_to_is_reached_even_if_fit_stops_early_and_is_checked():
    x, y = _task(n=128)
    model = _float_model()
    targets = [k.size // 20 for k in _kernels(model)]
    ft = QuantizedFinetuneCallback(weightbits=[2, 2], float_epochs=3, prune_to=targets,
                                   prune_epochs=3)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[ft])
    assert all(int(np.count_nonzero(k)) <= t for k, t in zip(_kernels(model), targets))
    with pytest.raises(ValueError, match="`prune_to`"):
        QuantizedFinetuneCallback(prune_to=[10**9, 1]).build(_float_model())
    with pytest.raises(ValueError, match="`prune_epochs`"):
        QuantizedFinetuneCallback(prune_to=[1, 1], prune_epochs=2, float_epochs=1)


def test_resumed_gradual_pruning_goes_on_with_the_same_schedule():
    x, y = _task()
    sizes = [k.size for k in _kernels(_model())]
    targets = [n // 10 for n in sizes]

    def counts(model, epochs, initial_epoch=0):
        ft = QuantizedFinetuneCallback(weightbits=[2, 2], float_epochs=3, prune_to=targets,
                                       prune_epochs=3)
        probe = _KernelProbe()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
        model.fit(x, y, epochs=epochs, initial_epoch=initial_epoch, batch_size=64, verbose=0,
                  callbacks=[ft, probe])
        return [[int(np.count_nonzero(k)) for k in kernels] for kernels in probe.kernels]

    class _Checkpoint(keras.callbacks.Callback):  # what the trainer saves at an epoch end
        def on_epoch_end(self, epoch, logs=None):
            self.weights = self.model.get_weights()

    whole = counts(_float_model(), 3)
    checkpoint = _Checkpoint()
    ft = QuantizedFinetuneCallback(weightbits=[2, 2], float_epochs=3, prune_to=targets,
                                   prune_epochs=3)
    interrupted = _float_model()
    interrupted.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
    interrupted.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[ft, checkpoint])
    restarted = _model()  # a new process: the epoch-1 checkpoint, a fresh callback
    restarted.set_weights(checkpoint.weights)
    assert [int(np.count_nonzero(k)) for k in _kernels(restarted)] == whole[0]
    resumed = counts(restarted, 3, initial_epoch=1)
    # Epoch 2 of the cubic schedule: 1 - (1/3)^3 of the way from the original start.
    expected = [round(t + (s - t) / 27) for s, t in zip(sizes, targets)]
    assert whole[1] == expected
    for got, want in zip(resumed[0], expected):
        assert abs(got - want) <= 1
    assert resumed[1] == whole[2] == targets


def test_finalize_after_distillation_ships_the_student():
    x, y = _task()
    student, teacher = _compressed(), _compressed()
    ft = QuantizedFinetuneCallback(weightbits=[2, 2])
    distiller = sqjl_tf.Distiller(student, teacher, temperature=2.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)
    distiller.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[ft])
    final = ft.finalize()
    assert not isinstance(final, sqjl_tf.Distiller)
    assert [w.shape for w in final.weights] == [w.shape for w in student.weights]
    np.testing.assert_allclose(final.predict(x[:64], verbose=0),
                               student.predict(x[:64], verbose=0), atol=1e-5)
    assert ft.size_bits() <= ft.initial_size_bits
