"""Any Keras model in, a working compressed model out (no dead layer, every weight type).

Every case runs the public flow (ADMMCallback + ADMMOptimizer in ``fit``, then
``finalize``) on a model users bring, at a budget between ~16x and ~500x, and
checks the same five things: no compressed weight is all zero, the output
still depends on the input, the budget holds (measured from the weights), the
finalized model carries no ADMM optimizer, and the ``.sqjl`` round trip is
exact.
"""

import keras
import numpy as np
import pytest

import sqjl_tf

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)  # the models' initial weights too


def _images(shape, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype("float32")


def _tokens(length, vocab, n=8, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (n, length)).astype("int32")


def _compress(model, x, nnz_budget, bit_budget, classes=10, batch_size=4, loss=LOSS,
              eager=True):
    """Trains ``model`` one epoch (2 steps) under ADMM; returns (callback, finalized model)."""
    n = len(x[0]) if isinstance(x, list) else len(x)
    y = np.random.default_rng(1).integers(0, classes, n)
    cb = sqjl_tf.ADMMCallback(nnz_budget=nnz_budget, bit_budget=bit_budget, rho=0.05,
                              projint=1, dualint=1, validate_finalized=False)
    # Eagerly: two steps cost less than tracing (and XLA-compiling) a large network's step.
    model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01), cb), loss=loss,
                  run_eagerly=eager)
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[cb])
    return cb, cb.finalize()


def _check(cb, compressed, x, x_other, tmp_path, template=None, min_coverage=0.0):
    report = sqjl_tf.compression_report(compressed)  # the budget comes with the model
    assert report.budget_bits == pytest.approx(cb.state.budget_bits)
    assert report.within_budget, str(report)
    assert report.size_bits <= cb.state.budget_bits
    empty = [s.name for s in report.layers if s.nnz == 0]
    assert not empty, f"all-zero compressed weights: {empty}"
    assert report.budget_coverage >= min_coverage, str(report)
    assert not isinstance(getattr(compressed, "optimizer", None), sqjl_tf.ADMMOptimizer)
    out = np.asarray(compressed(x))
    assert np.all(np.isfinite(out))
    path = tmp_path / "model.sqjl"
    sqjl_tf.save_compressed(compressed, path)
    loaded = sqjl_tf.load_compressed(path, model=template)
    assert len(loaded.weights) == len(compressed.weights)
    for a, b in zip(compressed.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    np.testing.assert_allclose(np.asarray(loaded(x)), out, rtol=1e-5, atol=1e-5)
    # Connectivity, in training mode (last: it moves BatchNorm's statistics): BatchNorm then
    # normalizes by the batch, where its moving statistics, after one step, still expect the
    # dense network's scale. A disconnected network gives the same output to float rounding;
    # a connected one, even at 500x with only the floor left, differs by more.
    live, live_other = (np.asarray(compressed(v, training=True)) for v in (x, x_other))
    change = np.max(np.abs(live - live_other))
    assert change > 1e-5 * np.max(np.abs(live)), "the output does not depend on the input"
    return report


# ----------------------------------------------------------------- applications
@pytest.mark.parametrize("name, nnz_budget, bit_budget", [
    ("MobileNetV2", 0.1, 4),       # 80x, the case that lost 15-18 of 53 kernels
    ("ResNet50", 0.02, 3),         # ~533x
    ("EfficientNetB0", 0.05, 4),   # 160x
])
@pytest.mark.slow
def test_keras_applications(name, nnz_budget, bit_budget, tmp_path):
    kwargs = dict(weights=None, input_shape=(32, 32, 3), classes=10)
    if name == "MobileNetV2":
        kwargs["alpha"] = 0.35
    model = getattr(keras.applications, name)(**kwargs)
    model.layers[-1].activation = keras.activations.linear  # logits, for the loss
    # One step of 4 images: the projections run at the start and after it (large models).
    x, x_other = _images((32, 32, 3), n=4), _images((32, 32, 3), n=4, seed=5)
    cb, compressed = _compress(model, x, nnz_budget, bit_budget)
    report = _check(cb, compressed, x, x_other, tmp_path)
    names = [s.name for s in report.layers]
    assert any("predictions" in n for n in names)
    # BatchNorm follows most kernels: their ranking uses the effective (folded) weights.
    assert len(cb.state._normalization) >= len(report.layers) // 2


# -------------------------------------------------------------------- small CNNs
def _small_cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(), keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10)])


def test_untrained_cnn_at_533x_keeps_every_layer(tmp_path):
    x, x_other = _images((28, 28, 1)), _images((28, 28, 1), seed=5)
    cb, compressed = _compress(_small_cnn(), x, 0.02, 3)
    report = _check(cb, compressed, x, x_other, tmp_path)
    assert report.compression_rate >= 500
    # the floor: every output unit of every layer keeps an input
    for k in sqjl_tf.compressible_kernels(compressed):
        w = np.asarray(k.variable.numpy())
        assert np.all(np.any(w.reshape(-1, w.shape[-1]) != 0, axis=0)), k.name


@pytest.mark.parametrize("nnz_budget, bit_budget", [(0.15, 4), (0.05, 4)])  # ~53x, 160x
def test_every_convolution_kernel_type(nnz_budget, bit_budget, tmp_path):
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(h)
    h = keras.layers.SeparableConv2D(12, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same")(h)
    h = keras.layers.Reshape((32, 32 * 6))(h)
    h = keras.layers.Conv1D(8, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    volume = keras.layers.Reshape((4, 4, 4, 1))(keras.layers.Dense(64)(h))
    h = keras.layers.Flatten()(keras.layers.Conv3D(4, 2)(volume))
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    x, x_other = _images((16, 16, 3)), _images((16, 16, 3), seed=5)
    cb, compressed = _compress(model, x, nnz_budget, bit_budget)
    report = _check(cb, compressed, x, x_other, tmp_path)
    kinds = {s.name.split("/")[-2].rstrip("_0123456789") for s in report.layers}
    assert {"conv2d", "depthwise_conv2d", "separable_conv2d", "conv2d_transpose", "conv1d",
            "conv3d", "dense"} <= kinds


# ------------------------------------------------------------------- model styles
def test_shared_layer_functional(tmp_path):
    a, b = keras.Input((12,)), keras.Input((12,))
    trunk = keras.layers.Dense(64, activation="relu", name="trunk")
    head = keras.layers.Dense(10, name="head")  # one layer, called on both inputs
    out = keras.layers.Add()([head(trunk(a)), head(trunk(b))])
    model = keras.Model([a, b], out)
    x = [_images((12,)), _images((12,), seed=2)]
    x_other = [_images((12,), seed=5), _images((12,), seed=6)]
    cb, compressed = _compress(model, x, 0.5, 4)  # 16x
    report = _check(cb, compressed, x, x_other, tmp_path)
    assert [s.name for s in report.layers] == ["trunk/kernel", "head/kernel"]
    assert report.layers[1].nnz >= 10


def test_nested_model(tmp_path):
    inner = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16, activation="relu")], name="inner")
    inputs = keras.Input((20,))
    model = keras.Model(inputs, keras.layers.Dense(10)(inner(inputs)))
    x, x_other = _images((20,)), _images((20,), seed=5)
    cb, compressed = _compress(model, x, 0.08, 4)  # 100x
    report = _check(cb, compressed, x, x_other, tmp_path)
    assert len(report.layers) == 3


class NoConfigNet(keras.Model):
    """Subclassed, with constructor arguments and no get_config: not rebuildable."""

    def __init__(self, width, classes):
        super().__init__()
        self.conv = keras.layers.Conv2D(width, 3, activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.out = keras.layers.Dense(classes)

    def call(self, x):
        return self.out(self.hidden(self.pool(self.conv(x))))


def test_subclassed_model_never_called_and_without_get_config(tmp_path):
    model = NoConfigNet(8, 10)
    assert not model.built
    x, x_other = _images((12, 12, 3)), _images((12, 12, 3), seed=5)
    cb, compressed = _compress(model, x, 0.2, 4, eager=False)  # 40x; the step traced unbuilt
    template = NoConfigNet(8, 10)
    template(x[:1])
    _check(cb, compressed, x, x_other, tmp_path, template=template)
    with pytest.raises(ValueError, match="stores none"):
        sqjl_tf.load_compressed(tmp_path / "model.sqjl")


def test_sequential_without_input_never_called(tmp_path):
    model = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    x, x_other = _images((20,)), _images((20,), seed=5)
    cb, compressed = _compress(model, x, 0.1, 4, eager=False)
    _check(cb, compressed, x, x_other, tmp_path)


def test_a_model_fit_builds_gets_the_admm_step_from_its_second_batch():
    """The first step builds the model (no state yet, so no ADMM term is traced into it); the
    state starts after it and the step is traced again: the second step's prox (beta = 100)
    puts W at V - U."""
    model = keras.Sequential([keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.1, bit_budget=4, rho=1e4, validate_finalized=False)
    model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01), cb), loss=LOSS)
    gaps = []

    class Gap(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            w, v, u = (np.asarray(t.numpy()) for t in (
                model.layers[0].kernel, cb.state.duplicates[0], cb.state.duals[0]))
            gaps.append(float(np.abs(w - (v - u)).max()))

    x = _images((20,))
    model.fit(x, np.zeros(len(x)), batch_size=4, epochs=1, verbose=0, callbacks=[cb, Gap()])
    assert gaps[1] < 1e-3


# --------------------------------------------------------------------- text models
def _recurrent(cell):
    return keras.Sequential([keras.Input((12,), dtype="int32"), keras.layers.Embedding(200, 16),
                             cell(24), keras.layers.Dense(4)])


def _transformer():
    tokens = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(300, 32)(tokens)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
    h = keras.layers.LayerNormalization()(h + attended)
    ff = keras.layers.Dense(32)(keras.layers.Dense(64, activation="relu")(h))
    h = keras.layers.LayerNormalization()(h + ff)
    return keras.Model(tokens, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling1D()(h)))


@pytest.mark.parametrize("build, nnz_budget, bit_budget", [
    (lambda: _recurrent(keras.layers.LSTM), 0.1, 4),      # 80x
    (lambda: _recurrent(keras.layers.GRU), 0.25, 4),      # 32x
    (_transformer, 0.02, 3),                              # ~533x
], ids=["lstm", "gru", "transformer"])
def test_text_models_are_inside_the_budget(build, nnz_budget, bit_budget, tmp_path):
    model = build()
    x, x_other = _tokens(12, 200), _tokens(12, 200, seed=5)
    cb, compressed = _compress(model, x, nnz_budget, bit_budget, classes=4)
    report = _check(cb, compressed, x, x_other, tmp_path, min_coverage=0.9)
    assert any(s.name.endswith("embeddings") for s in report.layers)


def test_budget_too_small_for_the_floor_is_an_error_before_training():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(500), keras.layers.Dense(3)])
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.01, bit_budget=1, rho=0.05)
    with pytest.raises(ValueError, match="one weight per output unit.*nnz_budget >="):
        cb.build(model)


# ------------------------------------------------------------- what comes back
def test_finalized_model_has_no_optimizer_and_loads_with_plain_keras(tmp_path):
    x = _images((28, 28, 1))
    cb, compressed = _compress(_small_cnn(), x, 0.1, 4)
    assert not getattr(compressed, "compiled", False)
    path = str(tmp_path / "model.keras")
    compressed.save(path)
    reloaded = keras.models.load_model(path)  # no custom_objects, no sqjl_tf class needed
    assert getattr(reloaded, "optimizer", None) is None
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(compressed(x)), atol=1e-6)
    assert "within budget" in str(sqjl_tf.compression_report(compressed))


def test_reloaded_training_model_says_why_it_cannot_resume_admm(tmp_path):
    x = _images((28, 28, 1))
    model = _small_cnn()
    cb, _ = _compress(model, x, 0.1, 4)
    path = str(tmp_path / "training.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded.optimizer, sqjl_tf.ADMMOptimizer)
    with pytest.raises(RuntimeError, match="cannot resume ADMM by itself"):
        reloaded.fit(x, np.zeros(len(x)), epochs=1, verbose=0)
    cb2 = sqjl_tf.ADMMCallback(nnz_budget=0.1, bit_budget=4, rho=0.05)
    reloaded.optimizer.admm = cb2  # attached: it trains under ADMM again
    reloaded.fit(x, np.zeros(len(x)), epochs=1, verbose=0, callbacks=[cb2])
    assert sqjl_tf.compression_report(cb2.finalize()).within_budget


class _Table(keras.layers.Layer):
    """A custom layer with a 2-D weight: not a built-in kernel."""

    def build(self, input_shape):
        self.table = self.add_weight(shape=(int(input_shape[-1]), 64), name="table")

    def call(self, x):
        return x @ self.table


def test_predicate_adds_a_custom_weight_and_the_report_lists_what_is_left_out():
    model = keras.Sequential([keras.Input((32,)), _Table(name="lookup"),
                              keras.layers.Dense(4, name="head")])
    default = sqjl_tf.compression_report(model)
    assert [s.name.split("/")[-2:] for s in default.layers] == [["head", "kernel"]]
    assert any(n.endswith("lookup/table") and c == 32 * 64 for n, c in default.left_out)
    assert "left out of the budget" in str(default) and "covers only" in str(default)

    def predicate(layer, variable):
        return True if layer.name == "lookup" else None  # add it, keep the defaults

    names = [k.name.split("/")[-2] for k in sqjl_tf.compressible_kernels(model, predicate)]
    assert names == ["lookup", "head"]
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.1, bit_budget=4, rho=0.05, predicate=predicate)
    assert [k.name.split("/")[-2] for k in cb.build(model).kernels] == ["lookup", "head"]
    report = sqjl_tf.compression_report(model, predicate=predicate)
    assert report.budget_coverage > 0.95
