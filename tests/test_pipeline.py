"""sqjl_tf.compress: one call from a target rate to a working compressed model."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import fakedata
import sqjl_tf
from sqjl_tf.pipeline import AUTO_KDTEMP, Recipe

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def task():
    x, y = fakedata.linear_task(512, seed=0)
    return x, y


def _trained_mlp(x, y):
    model = fakedata.mlp(48, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    return model


@pytest.mark.parametrize("rate, bits", [(4, 8.0), (16, 4.0), (100, 4.0), (533, 3.0), (2000, 3.0)])
def test_split_budget_gives_the_rate(rate, bits):
    nnz, got_bits = sqjl_tf.split_budget(rate)
    assert got_bits == bits
    assert 0 < nnz <= 1
    assert 32 / (nnz * got_bits) == pytest.approx(rate)


@pytest.mark.parametrize("rate", [3.9, 0, -5, float("nan"), float("inf"), "533"])
def test_split_budget_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match="`target_rate`"):
        sqjl_tf.split_budget(rate)


@pytest.mark.parametrize("epochs", [3, 6, 10, 32, 100])
def test_recipe_split_covers_the_epochs(epochs):
    split = Recipe().split(epochs)
    assert split["admm"] + split["float"] + split["quant"] == epochs
    assert min(split["admm"], split["float"], split["quant"], split["prune"]) >= 1
    assert split["prune"] <= split["float"]
    if epochs == 32:  # the benchmark's recipe
        assert split == {"admm": 14, "float": 14, "prune": 8, "quant": 4}


@pytest.mark.parametrize("shares", [(0.2, 0.4, 0.2), (0.05, 0.05, 0.9), (0.9, 0.01, 0.05),
                                    (0.5, 0.1, 0.1)])
@pytest.mark.parametrize("epochs", [3, 7, 20, 32])
def test_recipe_split_follows_custom_shares(shares, epochs):
    admm, prune, quant = shares
    split = Recipe(admm_share=admm, prune_share=prune, quant_share=quant).split(epochs)
    assert split["admm"] + split["float"] + split["quant"] == epochs
    assert min(split.values()) >= 1 and split["prune"] <= split["float"]
    if epochs == 20 and shares == (0.2, 0.4, 0.2):
        assert split == {"admm": 4, "float": 12, "prune": 8, "quant": 4}


@pytest.mark.parametrize("kwargs, name", [
    ({"admm_share": 0.0}, "admm_share"),
    ({"prune_share": 1.0}, "prune_share"),
    ({"quant_share": "0.1"}, "quant_share"),
    ({"admm_share": 0.6, "quant_share": 0.4}, "quant_share"),
    ({"admm_share": 0.5, "quant_share": 0.2, "prune_share": 0.4}, "prune_share"),
    ({"finetune_kdtemp": -1.0}, "finetune_kdtemp"),
    ({"finetune_kdtemp": float("nan")}, "finetune_kdtemp"),
    ({"finetune_kdtemp": True}, "finetune_kdtemp"),
    ({"prune_share": False}, "prune_share"),
    ({"finetune_train_centres": 1}, "finetune_train_centres"),
    ({"finetune_weight_decay": -0.1}, "finetune_weight_decay"),
    ({"finetune_weight_decay": float("inf")}, "finetune_weight_decay"),
    ({"finetune_weight_decay": "0.1"}, "finetune_weight_decay"),
    ({"importance": "l1"}, "importance"),
    ({"finetune_decay_scope": "kernels"}, "finetune_decay_scope"),
])
def test_recipe_rejects_bad_shares(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        Recipe(**kwargs)


def test_recipe_intervals_scale_with_the_epoch():
    assert Recipe().intervals(235) == (20, 240)  # the benchmark's projint / dualint
    projint, dualint = Recipe().intervals(7)
    assert projint == 1 and dualint == 7


@pytest.mark.parametrize("kwargs, name", [
    ({}, "target_rate"),
    ({"target_rate": 100, "nnz_budget": 0.1}, "target_rate"),
    ({"nnz_budget": 0.1}, "target_rate"),
    ({"target_rate": 100, "epochs": 2}, "epochs"),
    ({"target_rate": 100, "dense_epochs": 9, "epochs": 10}, "dense_epochs"),
    ({"target_rate": 100, "loss": None}, "loss"),
    ({"nnz_budget": 1.5, "bit_budget": 4}, "nnz_budget"),
    ({"target_rate": 100, "recipe": {"rho": 0.1}}, "recipe"),
])
def test_bad_arguments_fail_before_training(task, kwargs, name):
    model = fakedata.mlp(8)  # not compiled: no loss unless given
    kwargs = {"loss": LOSS, **kwargs}
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=f"`{name}`"):
        sqjl_tf.compress(model, task, **kwargs)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["train_data", "validation_data"])
def test_a_dataset_of_single_examples_is_refused_before_training(task, name):
    x, y = task
    model = fakedata.mlp(8)
    before = [w.copy() for w in model.get_weights()]
    data = {"train_data": (x, y), "validation_data": (x, y)}
    data[name] = tf.data.Dataset.from_tensor_slices((x, y))  # no .batch()
    with pytest.raises(ValueError, match=rf"`{name}`.*single examples.*\.batch\(64\)"):
        sqjl_tf.compress(model, data["train_data"], data["validation_data"], target_rate=20,
                         epochs=3, loss=LOSS, batch_size=64)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_compress_holds_the_budget_and_keeps_the_model_working(task):
    x, y = task
    model = _trained_mlp(x, y)
    dense_acc = model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    original = [w.copy() for w in model.get_weights()]
    result = sqjl_tf.compress(model, (x, y), (x, y), target_rate=40, epochs=4, batch_size=64,
                              seed=0, verbose=0)
    report = sqjl_tf.compression_report(result.model)  # measured again from the weights
    assert report.within_budget and report.size_bits <= result.budget_bits
    assert result.budget_bits == pytest.approx(32 * report.total_weights / 40, rel=0.01)
    assert all(s.nnz > 0 for s in report.layers)
    assert [s.nnz for s in report.layers] == result.nnz
    assert all(s.bits <= b for s, b in zip(report.layers, result.bits))
    assert result.epochs["dense"] == 0  # a trained model gets no dense warm-up
    assert set(result.history) == {"admm", "finetune"}
    result.model.compile(loss=LOSS, metrics=["accuracy"])
    accuracy = result.model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert accuracy > 0.5 * dense_acc + 0.125  # well above chance (0.25)
    for a, b in zip(original, model.get_weights()):  # the user's model is left alone
        np.testing.assert_array_equal(a, b)
    assert not getattr(result.model, "compiled", False) or result.model.optimizer is not None


@pytest.mark.parametrize("weighted", [False, True])
def test_untrained_model_gets_a_dense_warm_up(task, weighted):
    x, y = task
    model = fakedata.mlp(32, seed=1)
    data = (x, y)
    if weighted:  # Keras's (x, y, sample_weight) batches work as in fit
        data = tf.data.Dataset.from_tensor_slices((x, y, np.ones(len(x), np.float32))).batch(64)
    result = sqjl_tf.compress(model, data, target_rate=20, epochs=8, loss=LOSS, batch_size=64,
                              seed=0, verbose=0)
    assert result.epochs["dense"] == 2 and "dense" in result.history
    assert result.report.within_budget


def test_subclassed_unbuilt_model_without_get_config(task):
    x, y = task

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.out = keras.layers.Dense(4)

        def call(self, inputs):
            return self.out(self.hidden(inputs))

    result = sqjl_tf.compress(Net(), (x, y), target_rate=20, epochs=3, loss=LOSS,
                              dense_epochs=0, batch_size=64, seed=0, verbose=0)
    assert result.report.within_budget
    assert all(s.nnz > 0 for s in result.report.layers) and len(result.report.layers) == 2


@pytest.fixture(scope="module")
def memorised():
    """An MLP that has learned 128 random labels by heart, with held-out random data."""
    rng = np.random.default_rng(3)
    x, x_val = rng.standard_normal((2, 128, 16)).astype("float32")
    y, y_val = rng.integers(0, 4, (2, 128)).astype("int32")
    model = fakedata.mlp(64, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(3e-2), loss=LOSS)
    model.fit(x, y, epochs=80, batch_size=32, verbose=0)
    return model, (x, y), (x_val, y_val)


def _teachers(monkeypatch):
    """The (teacher weights, temperature) of every Distiller compress() makes, as a list."""
    from sqjl_tf import pipeline

    made = []

    def spy(student, teacher, temperature):
        made.append(([w.copy() for w in teacher.get_weights()], temperature))
        return sqjl_tf.Distiller(student, teacher, temperature)

    monkeypatch.setattr(pipeline, "Distiller", spy)
    return made


def test_compress_distils_stages_2_3_from_the_model_it_starts_from(task, monkeypatch):
    x, y = task
    model = _trained_mlp(x, y)
    original = [w.copy() for w in model.get_weights()]
    teachers = _teachers(monkeypatch)
    result = sqjl_tf.compress(model, (x, y), target_rate=40, epochs=3, batch_size=64, seed=0,
                              recipe=Recipe(finetune_kdtemp=2.0), verbose=0)
    (weights, temperature), = teachers  # one distilled stage: the fine-tuning
    assert temperature == 2.0
    for got, want in zip(weights, original):
        np.testing.assert_array_equal(got, want)
    assert not isinstance(result.model, sqjl_tf.Distiller)
    assert [w.shape for w in result.model.weights] == [w.shape for w in model.weights]
    assert sqjl_tf.compression_report(result.model).within_budget


def test_a_memorising_model_is_distilled_by_default(memorised, monkeypatch):
    model, train, validation = memorised
    teachers = _teachers(monkeypatch)
    result = sqjl_tf.compress(model, train, validation, target_rate=20, epochs=3, loss=LOSS,
                              batch_size=32, seed=0, verbose=0)
    (weights, temperature), = teachers
    assert temperature == result.kdtemp == AUTO_KDTEMP
    for got, want in zip(weights, model.get_weights()):  # the teacher: the model it started from
        np.testing.assert_array_equal(got, want)
    assert result.report.within_budget


@pytest.mark.parametrize("case", ["no validation", "probabilities", "generalises", "off"])
def test_no_distillation_where_the_rule_does_not_apply(memorised, task, monkeypatch, case):
    model, train, validation = memorised
    kwargs = {"loss": LOSS}
    if case == "no validation":
        validation = None
    elif case == "probabilities":  # the loss takes probabilities: no logits to distil
        kwargs["loss"] = keras.losses.SparseCategoricalCrossentropy()
    elif case == "generalises":  # validation loss close to the training loss
        model, train, validation = _trained_mlp(*task), task, task
    else:
        kwargs["recipe"] = Recipe(finetune_kdtemp=0.0)
    teachers = _teachers(monkeypatch)
    result = sqjl_tf.compress(model, train, validation, target_rate=20, epochs=3, batch_size=32,
                              seed=0, verbose=0, **kwargs)
    assert teachers == [] and result.kdtemp == 0.0


def test_compress_trains_the_centres_by_gradient_when_asked(task, monkeypatch):
    from sqjl_tf import pipeline

    x, y = task
    made = []

    class Recorded(pipeline.QuantizedFinetuneCallback):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(pipeline, "QuantizedFinetuneCallback", Recorded)
    result = sqjl_tf.compress(_trained_mlp(x, y), (x, y), target_rate=40, epochs=4,
                              batch_size=64, seed=0, verbose=0,
                              recipe=Recipe(finetune_train_centres=True))
    finetune, = made
    steps = int(np.ceil(len(x) / 64))
    assert finetune.train_centres
    assert int(finetune._centre_step.numpy()) == steps * result.epochs["quant"]  # one per batch
    assert result.report.within_budget
    assert all(s.nnz > 0 and s.bits <= b for s, b in zip(result.report.layers, result.bits))


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_compress_decays_only_the_finetuning_weights_when_asked(task, monkeypatch, decay):
    from sqjl_tf import pipeline

    x, y = task
    decays = []  # each fit's optimizer's weight decay, in order: ADMM, then fine-tuning
    real_fit = pipeline._fit

    def spy(model, optimizer, *args, **kwargs):
        decays.append(optimizer.weight_decay)
        return real_fit(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_fit", spy)
    result = sqjl_tf.compress(_trained_mlp(x, y), (x, y), target_rate=40, epochs=3,
                              batch_size=64, seed=0, verbose=0,
                              recipe=Recipe(finetune_weight_decay=decay))
    assert len(decays) == 2
    assert decays[1] == (decay or None)  # Keras's Adam: None is no decay
    assert decays[0] is None  # the ADMM stage keeps its own L2 (admm_weight_decay)
    assert result.report.within_budget and all(layer.nnz > 0 for layer in result.report.layers)


def _normalized_cnn(seed=0):
    """Conv -> BatchNorm -> ReLU -> pooling -> Dense: one kernel a normalization follows."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


@pytest.mark.parametrize("scope, decayed", [
    ("all", ["conv/kernel", "bn/gamma", "bn/beta", "head/kernel", "head/bias"]),
    ("normalized", ["conv/kernel"]),  # the only kernel whose scale BatchNorm cancels
])
def test_compress_decays_the_weights_its_scope_names(monkeypatch, scope, decayed):
    from sqjl_tf import pipeline

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6, 6, 2)).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int32") + (x[..., 1].mean(axis=(1, 2)) > 0)
    fits = []  # (model, optimizer) of each fit: ADMM, then fine-tuning
    real_fit = pipeline._fit

    def spy(model, optimizer, *args, **kwargs):
        fits.append((model, optimizer))
        return real_fit(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_fit", spy)
    result = sqjl_tf.compress(_normalized_cnn(), (x, y), target_rate=4, epochs=3, loss=LOSS,
                              batch_size=32, seed=0, verbose=0,
                              recipe=Recipe(finetune_weight_decay=0.5, finetune_decay_scope=scope))
    model, optimizer = fits[-1]
    # Keras's own test of whether a variable is decayed (the weight_decay step calls it).
    got = [v.path for v in model.trainable_variables
           if optimizer._use_weight_decay(v)]
    assert sorted(got) == sorted(decayed)
    assert optimizer.weight_decay == 0.5
    assert result.report.within_budget and all(layer.nnz > 0 for layer in result.report.layers)


def test_compress_ranks_by_the_recipes_importance(task, admm_callbacks):
    x, y = task
    result = sqjl_tf.compress(_trained_mlp(x, y), (x, y), target_rate=40, epochs=3,
                              batch_size=64, seed=0, verbose=0, recipe=Recipe(importance="lamp"))
    admm, = admm_callbacks
    assert admm.config.importance == "lamp"
    assert result.report.within_budget and all(layer.nnz > 0 for layer in result.report.layers)


def test_a_finished_distilled_compress_resumes_without_a_teacher(task, tmp_path, monkeypatch):
    from sqjl_tf import pipeline

    x, y = task
    model = _trained_mlp(x, y)
    kwargs = dict(target_rate=40, epochs=3, batch_size=64, seed=0, workdir=str(tmp_path),
                  recipe=Recipe(finetune_kdtemp=2.0), verbose=0)
    first = sqjl_tf.compress(model, (x, y), **kwargs)
    copies, copy = [], pipeline.uncompiled_copy

    def counted_copy(source):
        copies.append(source)
        return copy(source)

    monkeypatch.setattr(pipeline, "uncompiled_copy", counted_copy)
    again = sqjl_tf.compress(model, (x, y), **kwargs)
    assert len(copies) == 2  # the working copy and the result; no teacher
    assert first.kdtemp == again.kdtemp == 2.0  # the finished stage says how it was trained
    for got, want in zip(again.model.get_weights(), first.model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_distillation_needs_a_copyable_model(task):
    x, y = task

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.out = keras.layers.Dense(4)

        def call(self, inputs):
            return self.out(inputs)

    net = Net()
    net(x[:1])
    before = [w.copy() for w in net.get_weights()]
    with pytest.raises(ValueError, match="`recipe`.*finetune_kdtemp=0"):
        sqjl_tf.compress(net, (x, y), target_rate=20, epochs=3, loss=LOSS, dense_epochs=0,
                         recipe=Recipe(finetune_kdtemp=2.0), verbose=0)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def finished_workdir(task, tmp_path):
    """(a trained MLP, compress()'s keyword arguments with workdir=tmp_path, the result)."""
    x, y = task
    model = _trained_mlp(x, y)
    kwargs = dict(target_rate=40, epochs=3, batch_size=64, seed=0, workdir=str(tmp_path),
                  verbose=0)
    return model, kwargs, sqjl_tf.compress(model, (x, y), **kwargs)


def test_stages_from_before_a_new_recipe_setting_are_reused(task, tmp_path, finished_workdir):
    x, y = task
    model, kwargs, first = finished_workdir
    for name in ("stage_admm.json", "stage_finetune.json"):  # as an older version wrote them
        path = tmp_path / name
        record = json.loads(path.read_text())
        del record["signature"]["recipe"]["finetune_kdtemp"]
        path.write_text(json.dumps(record))

    class Fits(keras.callbacks.Callback):
        count = 0

        def on_train_begin(self, logs=None):
            Fits.count += 1

    again = sqjl_tf.compress(model, (x, y), callbacks=[Fits()], **kwargs)
    assert Fits.count == 0  # nothing trained again
    assert again.nnz == first.nnz and again.bits == first.bits
    with pytest.raises(ValueError, match="`workdir`"):  # a changed setting is still refused
        sqjl_tf.compress(model, (x, y), recipe=Recipe(finetune_kdtemp=2.0), **kwargs)


@pytest.mark.parametrize("steps_per_epoch", [None, 5])  # the whole split (8 batches), or less
def test_a_resumed_call_is_the_call_it_continues(task, tmp_path, steps_per_epoch):
    x, y = task

    def untrained_with_dropout():  # dense stage first; dropout draws in every stage
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Dense(48, "relu"),
                                 keras.layers.Dropout(0.3), keras.layers.Dense(int(y.max()) + 1)])

    kwargs = dict(target_rate=40, epochs=6, batch_size=64, seed=0, workdir=str(tmp_path),
                  loss=LOSS, steps_per_epoch=steps_per_epoch, verbose=0)
    whole = sqjl_tf.compress(untrained_with_dropout(), (x, y), (x[:128], y[:128]), **kwargs)
    assert whole.epochs["dense"] and whole.epochs["admm"]
    for interrupted in (("finetune",), ("admm", "finetune")):  # killed in that stage
        for stage in interrupted:
            for path in tmp_path.glob(f"stage_{stage}.*"):
                path.unlink()
        resumed = sqjl_tf.compress(untrained_with_dropout(), (x, y), (x[:128], y[:128]),
                                   **kwargs)
        assert resumed.nnz == whole.nnz and resumed.bits == whole.bits
        for got, want in zip(resumed.model.get_weights(), whole.model.get_weights()):
            np.testing.assert_array_equal(got, want)  # the same shuffles and dropout masks


def test_a_workdir_another_living_process_writes_in_is_refused(task, tmp_path,
                                                               finished_workdir):
    x, y = task
    model, kwargs, first = finished_workdir
    assert not (tmp_path / ".lock").exists()  # released when the call ends
    stages = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    (tmp_path / ".lock").write_text(str(os.getppid()))  # a living process holds it
    held = r"`workdir`.*another run \(process \d+\) is writing"
    with pytest.raises(ValueError, match=held) as err:
        sqjl_tf.compress(model, (x, y), **kwargs)
    assert "choose another `workdir`" in str(err.value) and "--workdir" not in str(err.value)
    assert (tmp_path / ".lock").read_text() == str(os.getppid())  # not taken from its holder
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != ".lock"} == stages

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (tmp_path / ".lock").write_text(str(ended.pid))  # left by a killed run: taken over
    again = sqjl_tf.compress(model, (x, y), **kwargs)
    assert again.nnz == first.nnz and not (tmp_path / ".lock").exists()
