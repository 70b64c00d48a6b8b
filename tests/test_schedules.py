"""Learning-rate schedules of the reference: values, warm-up, serialisation, grammar."""

import math

import keras
import numpy as np
import pytest

from sqjl_tf import schedules
from sqjl_tf.schedules import parse_lr_schedule


def _values(schedule, steps):
    return [float(schedule(t)) for t in steps]


def test_constant():
    for spec in ("", "const", None, " CONST "):
        s = parse_lr_schedule(spec, 0.1, steps_per_epoch=10, epochs=3)
        assert isinstance(s, schedules.ConstantSchedule)
        np.testing.assert_allclose(_values(s, [0, 7, 29, 1000]), [0.1] * 4, rtol=1e-6)


def test_cosine_per_iteration():
    s = parse_lr_schedule("cos", 1.0, steps_per_epoch=10, epochs=10)  # 100 iterations
    expected = [0.5 * (1 + math.cos(math.pi * t / 100)) for t in (0, 1, 25, 50, 99, 100)]
    np.testing.assert_allclose(_values(s, [0, 1, 25, 50, 99, 100]), expected, atol=1e-6)
    s = parse_lr_schedule("cos,0.1", 1.0, steps_per_epoch=10, epochs=10)
    np.testing.assert_allclose(_values(s, [0, 50, 100, 150]), [1.0, 0.55, 0.1, 0.1], atol=1e-6)


def test_step_halves_at_milestones():
    s = parse_lr_schedule("step,2,5", 0.8, steps_per_epoch=10, epochs=8)
    steps = [0, 19, 20, 49, 50, 79]
    np.testing.assert_allclose(_values(s, steps), [0.8, 0.8, 0.4, 0.4, 0.2, 0.2], rtol=1e-6)
    unsorted = parse_lr_schedule("step,5,2", 0.8, steps_per_epoch=10, epochs=8)
    np.testing.assert_allclose(_values(unsorted, steps), _values(s, steps), rtol=1e-6)


def test_exp_per_epoch():
    s = parse_lr_schedule("exp,0.9", 1.0, steps_per_epoch=4, epochs=5)
    np.testing.assert_allclose(
        _values(s, [0, 3, 4, 8, 19]), [1.0, 1.0, 0.9, 0.81, 0.9**4], rtol=1e-5
    )


def test_warmup_ramp_then_cosine():
    s = parse_lr_schedule("cos", 1.0, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    assert isinstance(s, schedules.LinearWarmup)
    ramp = _values(s, range(10))
    np.testing.assert_allclose(ramp, [(t + 1) / 10 for t in range(10)], rtol=1e-6)
    # The cosine spans the 40 iterations after the warm-up.
    np.testing.assert_allclose(_values(s, [10, 30, 50]), [1.0, 0.5, 0.0], atol=1e-6)


def test_warmup_composes_with_step_and_const():
    s = parse_lr_schedule("step,3", 0.4, steps_per_epoch=10, epochs=5, warmup_epochs=0.5)
    np.testing.assert_allclose(_values(s, [0, 4, 5, 29, 30]), [0.08, 0.4, 0.4, 0.4, 0.2], rtol=1e-6)
    s = parse_lr_schedule("", 0.4, steps_per_epoch=10, epochs=5, warmup_epochs=2)
    np.testing.assert_allclose(_values(s, [0, 9, 19, 40]), [0.02, 0.2, 0.4, 0.4], rtol=1e-6)


@pytest.mark.parametrize(
    "spec",
    ["cos,0.01", "step,2,4", "exp,0.5", "const", "plat,0.5,0.01"],
)
@pytest.mark.parametrize("warmup", [0, 1])
def test_serialization_round_trip(spec, warmup):
    s = parse_lr_schedule(spec, 0.1, steps_per_epoch=10, epochs=6, warmup_epochs=warmup)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert type(restored) is type(s)
    assert restored.get_config() == s.get_config()
    steps = [0, 5, 10, 25, 45, 59]
    np.testing.assert_allclose(_values(restored, steps), _values(s, steps), rtol=1e-6)
    # Through an optimizer's config, as a saved model does.
    opt = keras.optimizers.SGD(learning_rate=s, momentum=0.9)
    opt2 = keras.optimizers.SGD.from_config(opt.get_config())
    np.testing.assert_allclose(float(opt2._learning_rate(25)), float(s(25)), rtol=1e-6)


def test_schedule_drives_optimizer_iterations():
    s = parse_lr_schedule("step,1", 1.0, steps_per_epoch=2, epochs=3)
    opt = keras.optimizers.SGD(learning_rate=s)
    v = keras.Variable(np.zeros(1, np.float32))
    seen = []
    for _ in range(4):
        seen.append(float(opt.learning_rate))
        opt.apply([keras.ops.ones(1)], [v])
    assert seen == [1.0, 1.0, 0.5, 0.5]
    np.testing.assert_allclose(v.numpy(), [-3.0])


@pytest.mark.parametrize(
    "spec",
    [
        "cos,x",
        "cos,0.1,0.2",
        "cos,-0.1",
        "cos,5",  # min_lr > base_lr
        "cos,nan",
        "step",
        "step,a",
        "step,0",
        "step,1.5",
        "step,2,",
        "exp",
        "exp,-1",
        "exp,0",
        "exp,0.5,2",
        "foo",
        "const,1",
        "plat",
        "plat,0.5",
        "plat,2,0",
        "plat,0,0",
        "plat,0.5,-1",
        "plat,a,b",
        ",",
    ],
)
def test_malformed_strings(spec):
    with pytest.raises(ValueError) as info:
        parse_lr_schedule(spec, 0.1, steps_per_epoch=10, epochs=5)
    message = str(info.value)
    assert "Invalid value for argument `lr_sched`" in message
    assert f"Received: {spec!r}" in message
    assert "Expected" in message and "step,M1,M2" in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_lr": 0},
        {"base_lr": float("inf")},
        {"steps_per_epoch": 0},
        {"epochs": 0},
        {"warmup_epochs": -1},
    ],
)
def test_invalid_numeric_arguments(kwargs):
    args = {"base_lr": 0.1, "steps_per_epoch": 10, "epochs": 5, **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"`{name}`"):
        parse_lr_schedule("cos", **args)


def _plateau_fit(schedule_or_lr, callback, losses):
    """Runs the callback's epoch hook over a fake sequence of validation losses."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule_or_lr), loss="mse")
    callback.set_model(model)
    callback.on_train_begin()
    lrs = []
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"val_loss": loss})
        lrs.append(callback.get_lr())
    return model, lrs


def test_plateau_schedule_lowered_by_callback():
    s = parse_lr_schedule("plat,0.5,0.1", 1.0, steps_per_epoch=10, epochs=5)
    assert isinstance(s, schedules.PlateauSchedule)
    cb = s.callback(patience=1)
    # 1.0 best; 0.95 is not a 10% improvement; second bad epoch > patience -> halve.
    _, lrs = _plateau_fit(s, cb, [1.0, 0.95, 0.95, 0.5, 0.5, 0.5])
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    assert float(s(123)) == 0.25
    assert s.get_config()["learning_rate"] == 0.25


def test_plateau_with_warmup_and_found_through_optimizer():
    s = parse_lr_schedule("plat,0.5,0", 1.0, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    cb = schedules.plateau_callback(0.5, 0.0, patience=0)  # finds the schedule itself
    _, lrs = _plateau_fit(s, cb, [1.0, 1.0, 1.0])
    assert lrs == [1.0, 0.5, 0.25]
    np.testing.assert_allclose(float(s(4)), 0.25 * 0.5, rtol=1e-6)  # ramp still applies


def test_plateau_callback_on_constant_rate_and_through_wrappers():
    import sqjl_tf

    cb = schedules.plateau_callback(0.1, 0.0, monitor="val_accuracy", patience=0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.5))
    model.compile(optimizer=opt, loss="mse")
    cb.set_model(model)
    cb.on_train_begin()
    for epoch, acc in enumerate([0.5, 0.6, 0.6]):
        cb.on_epoch_end(epoch, {"val_accuracy": acc})
    np.testing.assert_allclose(float(opt.inner_optimizer.learning_rate), 0.05, rtol=1e-6)


def test_plateau_callback_refuses_other_schedules():
    s = parse_lr_schedule("cos", 1.0, steps_per_epoch=10, epochs=5)
    cb = schedules.plateau_callback(0.5, 0.0, patience=0)
    with pytest.raises(ValueError, match="`optimizer`"):
        _plateau_fit(s, cb, [1.0, 1.0])
    with pytest.raises(ValueError, match="`factor`"):
        schedules.plateau_callback(1.5, 0.0)
    with pytest.raises(ValueError, match="`schedule`"):
        schedules.PlateauCallback(0.5, 0.0, schedule=s)


def test_plateau_in_fit_lowers_rate():
    x = np.random.default_rng(0).standard_normal((64, 2)).astype("float32")
    y = np.zeros((64, 1), "float32")
    s = parse_lr_schedule("plat,0.5,0", 0.1, steps_per_epoch=2, epochs=4)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=s), loss="mse")
    # A monitored metric that never improves: "loss" after the model reached 0 is constant.
    model.layers[0].kernel.assign(np.zeros((2, 1), "float32"))
    model.fit(x, y, batch_size=32, epochs=4, verbose=0,
              callbacks=[s.callback(monitor="loss", patience=0)])
    assert s.value == pytest.approx(0.1 * 0.5**3)
