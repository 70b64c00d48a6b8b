"""Reliability: NaN faults, crash-resume, atomic checkpoints, determinism, bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from fakedata import fake_checkpoint, write_fashion_mnist

import sqjl_tf
from sqjl_tf import checkpoint, trainer
from sqjl_tf.guards import NonFiniteError, NonFiniteGuard
from sqjl_tf.rundir import RunDir
from sqjl_tf.run_logger import RunLogger
from sqjl_tf.schedules import ConstantSchedule, ScaledSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _nan_dataset(poison):
    """8 batches per epoch; ``poison(epoch, batch)`` says which batches carry a NaN."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    calls = {"epoch": -1}

    def gen():
        calls["epoch"] += 1
        for b in range(8):
            xb = x[b * 16:(b + 1) * 16].copy()
            if poison(calls["epoch"], b):
                xb[0, 0] = np.nan
            yield xb, y[b * 16:(b + 1) * 16]

    spec = (tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _admm_model(activation="relu"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation=activation),
                              keras.layers.Dense(2)])
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.5, bit_budget=4, rho=0.05)
    schedule = ScaledSchedule(ConstantSchedule(0.05))
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(schedule), cb)
    model.compile(optimizer=opt, loss=LOSS)
    return model, cb, opt, schedule


class _Poison(keras.layers.Layer):
    """Identity forward; its backward pass gives NaN while ``armed`` (loss stays finite)."""

    def build(self, input_shape):
        self.armed = tf.Variable(False, trainable=False)

    def call(self, x):
        armed = self.armed

        @tf.custom_gradient
        def identity(t):
            def grad(upstream):
                return tf.where(armed, tf.fill(tf.shape(upstream), np.nan), upstream)
            return tf.identity(t), grad

        return identity(x)


def _poisoned_admm_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              _Poison(), keras.layers.Dense(2)])
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.5, bit_budget=4, rho=0.05)
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(ScaledSchedule(ConstantSchedule(0.05))), cb)
    model.compile(optimizer=opt, loss=LOSS)
    return model, cb, opt


class _At(keras.callbacks.Callback):
    """Calls ``action(model)`` at one (epoch, batch): ``when`` is "begin" or "end" of it."""

    def __init__(self, epoch, batch, when, action):
        super().__init__()
        self.target, self.when, self.action, self.epoch = (epoch, batch), when, action, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.when == "begin" and (self.epoch, batch) == self.target:
            self.action(self.model)

    def on_train_batch_end(self, batch, logs=None):
        if self.when == "end" and (self.epoch, batch) == self.target:
            self.action(self.model)


def _nan_into_kernel(model):
    kernel = model.layers[0].kernel
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0]], [np.nan]))


def _injection(kind):
    """(model, cb, opt, data, injector callbacks placed before the guard) for one fault."""
    clean = _nan_dataset(lambda epoch, batch: False)
    if kind == "input":  # linear: a fused oneDNN matmul+ReLU may turn the NaN into 0 (AMX CPUs)
        model, cb, opt, _ = _admm_model(activation=None)
        return model, cb, opt, _nan_dataset(lambda e, b: (e, b) == (1, 2)), []
    if kind == "kernel":  # after the step of epoch 2, batch 3: the logged loss is finite
        model, cb, opt, _ = _admm_model()
        return model, cb, opt, clean, [_At(1, 2, "end", _nan_into_kernel)]
    model, cb, opt = _poisoned_admm_model()  # "gradient": the forward pass stays finite
    arm = _At(1, 2, "begin", lambda m: m.layers[1].armed.assign(True))
    return model, cb, opt, clean, [arm]


@pytest.mark.parametrize("kind, what", [("input", "the loss is nan"),
                                        ("kernel", "holds NaN/inf"),
                                        ("gradient", "a gradient held NaN/inf")])
def test_nan_stops_with_epoch_and_batch_and_keeps_last_good_checkpoint(kind, what, tmp_path):
    model, cb, opt, data, injectors = _injection(kind)
    logger = RunLogger(str(tmp_path), opt, lambda: cb.state)
    callbacks = injectors + [NonFiniteGuard(), cb, logger]
    with pytest.raises(NonFiniteError, match=f"epoch 2, batch 3 .*{what}.*last good checkpoint"):
        model.fit(data, epochs=3, verbose=0, callbacks=callbacks)
    meta = checkpoint.read_metadata(os.path.join(tmp_path, RunDir.LATEST))
    assert meta["epoch"] == 1
    fresh, cb2, opt2 = _poisoned_admm_model() if kind == "gradient" else _admm_model()[:3]
    checkpoint.load_checkpoint(os.path.join(tmp_path, RunDir.LATEST), fresh, opt2, cb2.build(fresh))
    assert all(np.all(np.isfinite(w.numpy())) for w in fresh.weights)
    assert len(open(os.path.join(tmp_path, "metrics.jsonl")).readlines()) == 1


def test_nan_kernel_met_by_the_admm_callback_first_is_the_same_clear_error():
    model, cb, opt, _ = _admm_model()
    cb.config = dataclasses.replace(cb.config, projint=1, dualint=1)  # a projection every batch
    with pytest.raises(NonFiniteError, match="epoch 1, batch 2 .*dense.*kernel` holds NaN"):
        model.fit(_nan_dataset(lambda e, b: False), epochs=1, verbose=0,
                  callbacks=[_At(0, 1, "end", _nan_into_kernel), cb, NonFiniteGuard()])


def test_custom_loop_stops_on_a_nan_gradient():
    model, cb, opt = _poisoned_admm_model()
    state = cb.build(model)
    data = _nan_dataset(lambda e, b: False)
    model.layers[1].armed.assign(True)
    with pytest.raises(NonFiniteError, match="epoch 1, batch 1 .*a gradient held NaN/inf"):
        sqjl_tf.train_loop(model, opt, data, epochs=1, loss=LOSS, global_batch_size=16,
                           state=state)


def test_nan_recovery_restores_and_lowers_learning_rate(tmp_path):
    model, cb, opt, schedule = _admm_model()
    logger = RunLogger(str(tmp_path), opt, lambda: cb.state)
    path = os.path.join(tmp_path, RunDir.LATEST)

    def restore():
        checkpoint.load_checkpoint(path, model, opt, cb.state)
        return True

    seen = {"n": 0}

    def poison(epoch, batch):  # a transient fault: only the first time epoch 2, batch 3 is read
        if epoch == 1 and batch == 2 and seen["n"] == 0:
            seen["n"] += 1
            return True
        return False

    guard = NonFiniteGuard(restore, schedule.scale, factor=0.5, max_recoveries=1)
    model.fit(_nan_dataset(poison), epochs=3, verbose=0, callbacks=[guard, cb, logger])
    assert guard.recoveries == 1
    assert float(schedule.scale.numpy()) == pytest.approx(0.5)
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    assert checkpoint.read_metadata(path)["epoch"] == 3


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = os.path.join(tmp_path, "latest.ckpt")
    checkpoint.save_checkpoint(path, model, metadata={"epoch": 1})
    good = [w.numpy().copy() for w in model.weights]
    model.layers[0].kernel.assign(np.full((4, 3), 7.0, np.float32))

    def crash(*args, **kwargs):  # killed once the data is written, before the pointer moves
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(checkpoint, "_write_pointer", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, model, metadata={"epoch": 2})
    monkeypatch.undo()
    assert "ckpt-2.index" in os.listdir(path)
    restored = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert checkpoint.load_checkpoint(path, restored)["epoch"] == 1
    for a, b in zip(good, restored.weights):
        np.testing.assert_array_equal(a, b.numpy())
    checkpoint.save_checkpoint(path, model, metadata={"epoch": 2})  # the next save tidies up
    assert sorted(os.listdir(path)) == ["checkpoint", "ckpt-3.data-00000-of-00001",
                                        "ckpt-3.index", "ckpt-3.json"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes(tmp_path, run_main):
    data = write_fashion_mnist(str(tmp_path / "data"), train=3000, test=200)
    logdir = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "run.py"), "--dataset=fashion_mnist",
           f"--data_dir={data}", "--arch=caffelenet", "-b", "32", "--epochs=2",
           "--nnz_budget=0.05", "--bit_budget=3", "--rho=0.05", "--prox", "--lr=0.02",
           "--seed=1", "--export=keras", f"--logdir={logdir}"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, latest = os.path.join(logdir, "metrics.jsonl"), os.path.join(logdir, RunDir.LATEST)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not checkpoint.exists(latest):
        time.sleep(0.1)  # epoch 1's checkpoint, the last thing its end writes
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.read_metadata(os.path.join(logdir, RunDir.LATEST))["epoch"] >= 1
    assert run_main(cmd[2:]) == 0  # the same command (in this process: TF is loaded here)
    final = json.load(open(os.path.join(logdir, "final.json")))
    assert final["within_budget"] and final["size_bits"] <= final["budget_bits"]
    epochs = [json.loads(line)["epoch"] for line in open(metrics)]
    assert epochs == [1, 2]


def test_same_seed_same_weights(tmp_path):
    data = write_fashion_mnist(str(tmp_path / "data"), train=192, test=64)
    runs = []
    for name in ("a", "b"):
        record = trainer.run(mode="compress", dataset="fashion_mnist", data_dir=data,
                             arch="caffelenet", epochs=2, nnz_budget=0.05, bit_budget=3, rho=0.05,
                             prox=True, lr=0.02, seed=7, batch_size=32, export=("keras",),
                             logdir=str(tmp_path / name))
        runs.append(keras.models.load_model(record["files"]["keras"]).get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_corrupted_pretrain_file_is_a_usage_error_and_logdir_untouched(
        tmp_path, tiny_fashion_mnist_dir):
    data = tiny_fashion_mnist_dir
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"not a zip file at all")
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "keep.txt").write_text("precious")
    with pytest.raises(trainer.UsageError, match="`pretrain`"):
        trainer.run(dataset="fashion_mnist", data_dir=data, pretrain=str(bad), logdir=str(logdir))
    assert sorted(os.listdir(logdir)) == ["keep.txt"]
    assert (logdir / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(nnz_budget=float("nan")), "`nnz_budget`"),
        (dict(bit_budget=0.5), "`bit_budget`"),
        (dict(lr=-1.0), "`lr`"),
        (dict(rho=0.0), "`rho`"),
        (dict(epochs=0), "`epochs`"),
        (dict(start_epoch=5, epochs=3), "`start_epoch`"),
        (dict(optim="lbfgs"), "`optim`"),
        (dict(lr_sched="exp,-1"), "lr_sched"),
        (dict(lr_sched="plat,2,0"), "lr_sched"),
        (dict(quant=True, prune=True), "`quant`"),
        (dict(projint=0, dualint=5), "`dualint`"),
        (dict(momentum=1.5), "`momentum`"),
        (dict(nan_recover=-1), "`nan_recover`"),
    ],
)
def test_more_usage_errors_before_any_work(kwargs, needle, tmp_path):
    with pytest.raises(trainer.UsageError, match=needle):
        trainer.run(logdir=str(tmp_path / "never"), **kwargs)
    assert not os.path.exists(tmp_path / "never")


def test_overwrite_refuses_a_folder_with_foreign_files_and_deletes_nothing(tmp_path):
    logdir = tmp_path / "d"
    (logdir / "my_thesis").mkdir(parents=True)
    (logdir / "notes.txt").write_text("x")
    (logdir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(trainer.UsageError, match="`overwrite`.*notes.txt.*nothing was deleted"):
        trainer.run(logdir=str(logdir), overwrite=True, data_dir=str(tmp_path / "none"))
    assert sorted(os.listdir(logdir)) == ["metrics.jsonl", "my_thesis", "notes.txt"]


def test_overwrite_deletes_only_what_a_run_wrote(tmp_path):
    logdir = tmp_path / "run"
    (logdir / "tensorboard").mkdir(parents=True)
    (logdir / ".tmp-k1ll3d-saved_model").mkdir()  # a killed SavedModel export
    for name in ("config.json", "metrics.jsonl", "latest.ckpt.npz", ".tmp-abc.npz",
                 "epoch_0004.ckpt.npz", "model_compressed.sqjl", "allocation.png"):
        (logdir / name).write_text("old")
    assert RunDir(str(logdir)).prepare(overwrite=True) is None
    assert os.listdir(logdir) == []


def test_resuming_with_another_budget_is_a_usage_error_and_nothing_is_rewritten(tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    config = {"mode": "compress", "dataset": "fashion_mnist", "arch": "caffelenet",
              "nnz_budget": 0.02, "bit_budget": 3.0, "quant": False, "prune": False}
    (logdir / "config.json").write_text(json.dumps(config))
    fake_checkpoint(logdir)
    with pytest.raises(trainer.UsageError, match="`nnz_budget`. Received: 0.05 on resuming"):
        trainer.run(mode="compress", dataset="fashion_mnist", arch="caffelenet",
                    nnz_budget=0.05, bit_budget=3, logdir=str(logdir))
    assert json.loads((logdir / "config.json").read_text()) == config
    with pytest.raises(trainer.UsageError, match="`mode`"):
        trainer.run(mode="pretrain", dataset="fashion_mnist", arch="caffelenet",
                    logdir=str(logdir))


def test_a_second_run_on_the_same_folder_is_refused_and_a_stale_lock_taken_over(
        tmp_path, tiny_fashion_mnist_dir):
    data = tiny_fashion_mnist_dir
    logdir = tmp_path / "run"
    logdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (logdir / ".lock").write_text(str(holder.pid))
        with pytest.raises(trainer.UsageError, match=f"another run \\(process {holder.pid}\\)"):
            trainer.run(mode="pretrain", dataset="fashion_mnist", data_dir=data, epochs=1,
                        batch_size=32, export=("keras",), logdir=str(logdir))
        assert sorted(os.listdir(logdir)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # its process is gone: the lock is stale, the run goes on and releases it at the end
    record = trainer.run(mode="pretrain", dataset="fashion_mnist", data_dir=data, epochs=1,
                         batch_size=32, export=("keras",), logdir=str(logdir))
    assert record["test_accuracy"] >= 0 and not (logdir / ".lock").exists()


@pytest.mark.parametrize("monitor, values, best_epoch", [
    ("val_accuracy", [0.5, 0.8, 0.7], 2),  # higher is better
    ("val_loss", [0.9, 0.4, 0.6], 2),       # a loss: lower is better
])
def test_best_checkpoint_is_the_best_epoch_whichever_way_the_metric_goes(
        monitor, values, best_epoch, tmp_path):
    model, cb, opt, _ = _admm_model()
    cb.build(model)
    logger = RunLogger(str(tmp_path), opt, lambda: cb.state, monitor=monitor)
    logger.set_model(model)
    for epoch, value in enumerate(values):
        logger.on_epoch_begin(epoch)
        logger.on_epoch_end(epoch, {monitor: value})
    meta = checkpoint.read_metadata(os.path.join(tmp_path, RunDir.BEST))
    assert meta["epoch"] == best_epoch and meta["best_value"] == values[best_epoch - 1]
