"""Exact resume (#20): a run killed mid-epoch, resumed by the same command, is the run it continues.

A kill is simulated in-process: after a given batch of a given epoch the
NonFiniteGuard (the first callback) raises, so no epoch end, metrics line or
checkpoint follows; the same ``trainer.run(...)`` arguments then resume from the
last epoch's checkpoint. The resumed run must end with the checkpoint an
uninterrupted run ends with: every model weight, optimizer variable, ADMM and
fine-tuning state, to float tolerance.
"""

import json
import os
import shutil

import numpy as np
import pytest
from fakedata import fake_checkpoint, write_fashion_mnist

from sqjl_tf import config, trainer
from sqjl_tf.checkpoint import read_arrays, read_metadata
from sqjl_tf.guards import NonFiniteGuard
from sqjl_tf.models import build_model
from sqjl_tf.rundir import RunDir

STEPS = 3  # batches per epoch: 96 examples, batches of 32


class _Killed(Exception):
    """Stands for SIGKILL: raised out of fit with no epoch end."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion_mnist(str(tmp_path_factory.mktemp("fmnist")), train=96, test=32)


def _compress_args(data, logdir):
    return dict(mode="compress", dataset="fashion_mnist", data_dir=data, arch="caffelenet",
                epochs=3, nnz_budget=0.05, bit_budget=3, rho=0.05, prox=True, dp=0.25,
                lr=0.02, lr_sched="cos", batch_size=32, seed=3, workers=1, export=(),
                logdir=str(logdir))


@pytest.fixture(scope="module")
def finetune_start(tmp_path_factory):
    """A dense caffelenet to fine-tune (random weights: training is not the point)."""
    path = str(tmp_path_factory.mktemp("start") / "dense.keras")
    build_model("caffelenet", 10, (28, 28, 1)).save(path)
    return path


def _finetune_args(data, start, logdir):
    # epochs 1-2: full precision, pruned gradually to 30% of the weights (the cubic schedule);
    # epochs 3-4: quantized at 3 bits; the plateau schedule's state is in the checkpoint too.
    return dict(mode="finetune", dataset="fashion_mnist", data_dir=data, arch="caffelenet",
                pretrain=start, epochs=4, float_epochs=2, prune_epochs=2,
                prune_to=[150, 7500, 120000, 1500], weightbits=[3, 3, 3, 3], lr=0.01,
                lr_sched="plat,0.5,0.01", batch_size=32, seed=5, workers=1,
                export=(), logdir=str(logdir))


def _kill_after(monkeypatch, epoch, batch):
    """The next run dies after ``batch`` batches of ``epoch`` (1-based), mid-epoch."""
    real = NonFiniteGuard.on_batch_end

    def on_batch_end(self, b, logs=None):
        real(self, b, logs)
        if self._epoch + 1 == epoch and b + 1 == batch:
            raise _Killed(f"killed at epoch {epoch}, batch {batch}")

    monkeypatch.setattr(NonFiniteGuard, "on_batch_end", on_batch_end)


def _interrupted(monkeypatch, args, epoch, batch):
    with monkeypatch.context() as patch:
        _kill_after(patch, epoch, batch)
        with pytest.raises(_Killed):
            trainer.run(**args)
    meta = read_metadata(os.path.join(args["logdir"], RunDir.LATEST))
    assert meta["epoch"] == epoch - 1  # the last epoch's checkpoint, not the killed one's


def _checkpoint(logdir):
    return read_arrays(os.path.join(logdir, RunDir.LATEST))


def _assert_same_checkpoint(got_dir, want_dir):
    got, want = _checkpoint(got_dir), _checkpoint(want_dir)
    assert sorted(got) == sorted(want)
    for key in want:
        if want[key].dtype.kind == "f":
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _epochs(logdir):
    return [json.loads(line)["epoch"] for line in open(os.path.join(logdir, RunDir.METRICS))]


@pytest.fixture(scope="module")
def compress_reference(data, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("compress_whole")
    record = trainer.run(**_compress_args(data, logdir))
    return str(logdir), record


@pytest.mark.slow
def test_compression_killed_mid_epoch_resumes_exactly(data, compress_reference, tmp_path,
                                                      monkeypatch):
    want_dir, want = compress_reference
    args = _compress_args(data, tmp_path / "run")
    _interrupted(monkeypatch, args, epoch=2, batch=2)
    got = trainer.run(**args)  # the same command
    _assert_same_checkpoint(args["logdir"], want_dir)
    assert _checkpoint(want_dir)["state/seed/0"].size  # the dropout's seed state is saved
    assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=1e-6)
    assert got["allocated_bits"] == want["allocated_bits"]
    assert _epochs(args["logdir"]) == [1, 2, 3]


@pytest.mark.slow
def test_finetune_killed_while_pruning_and_while_quantized_resumes_exactly(
        data, finetune_start, tmp_path, monkeypatch):
    want_dir = tmp_path / "whole"
    want = trainer.run(**_finetune_args(data, finetune_start, want_dir))
    args = _finetune_args(data, finetune_start, tmp_path / "run")
    _interrupted(monkeypatch, args, epoch=2, batch=2)  # mid-schedule: pruning, full precision
    state = _checkpoint(args["logdir"])
    assert not state["state/finetune/quantizing"] and not state["state/finetune/pruned"]
    assert int(state["state/finetune/prune_step"]) == STEPS
    _interrupted(monkeypatch, args, epoch=4, batch=1)  # the resumed run, killed while quantized
    assert _checkpoint(args["logdir"])["state/finetune/quantizing"]
    got = trainer.run(**args)
    _assert_same_checkpoint(args["logdir"], want_dir)
    assert [layer["nnz"] for layer in got["layers"]] == [layer["nnz"] for layer in want["layers"]]
    assert got["size_bits"] == want["size_bits"]
    assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=1e-6)
    assert _epochs(args["logdir"]) == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_kill_between_the_metrics_line_and_the_checkpoint_leaves_each_epoch_once(
        data, compress_reference, tmp_path, monkeypatch):
    from sqjl_tf import run_logger

    want_dir, _ = compress_reference
    args = _compress_args(data, tmp_path / "run")
    real = run_logger.save_checkpoint

    def killed_save(path, *a, **kw):  # the epoch-2 save dies half written
        if json.loads(open(os.path.join(args["logdir"], RunDir.METRICS)).read().splitlines()[-1])[
                "epoch"] == 2:
            latest = os.path.join(args["logdir"], RunDir.LATEST)  # a save cut short there:
            open(os.path.join(latest, "ckpt-2.index"), "wb").write(b"\0\1")  # no pointer to it
            os.makedirs(os.path.join(latest, "ckpt-2_temp"))
            raise _Killed("killed during the save")
        return real(path, *a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(run_logger, "save_checkpoint", killed_save)
        with pytest.raises(_Killed):
            trainer.run(**args)
    assert _epochs(args["logdir"]) == [1, 2]  # epoch 2's line, but epoch 1's checkpoint
    latest = os.path.join(args["logdir"], RunDir.LATEST)
    assert "ckpt-2.index" in os.listdir(latest)
    trainer.run(**args)
    assert _epochs(args["logdir"]) == [1, 2, 3]
    assert sorted(os.listdir(latest)) == [  # the killed save's files gone (it was ckpt-2)
        "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index", "ckpt-4.json"]
    _assert_same_checkpoint(args["logdir"], want_dir)


def test_checkpoint_run_state_round_trip_missing_state_and_shapes(tmp_path):
    import keras
    import tensorflow as tf

    from sqjl_tf.checkpoint import load_checkpoint, save_checkpoint, state_names

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    saved = {"lr/scale": tf.Variable(0.25), "finetune/0.mask": tf.Variable([True, False])}
    path = save_checkpoint(str(tmp_path / "new.ckpt"), model, metadata={"epoch": 1},
                           variables=saved)
    assert state_names(path) == ["finetune/0.mask", "lr/scale"]
    assert read_arrays(path)["state/lr/scale"] == np.float32(0.25)
    restored = {"lr/scale": tf.Variable(1.0), "finetune/0.mask": tf.Variable([False, False])}
    assert load_checkpoint(str(tmp_path / "new.ckpt"), model, variables=restored)["epoch"] == 1
    assert float(restored["lr/scale"].numpy()) == 0.25
    assert restored["finetune/0.mask"].numpy().tolist() == [True, False]
    old = save_checkpoint(str(tmp_path / "old.ckpt"), model, metadata={"epoch": 1})
    with pytest.raises(ValueError, match="lacks some of its objects"):  # state it never saved
        load_checkpoint(old, model, variables=restored)
    with pytest.raises(ValueError, match="incompatible tensor with shape \\(2,\\)"):
        load_checkpoint(path, model, variables={"finetune/0.mask": tf.Variable([True])})


def test_a_checkpoint_folder_keeps_one_checkpoint_and_a_stale_pointer_is_not_found(tmp_path):
    import keras

    from sqjl_tf.checkpoint import load_checkpoint, save_checkpoint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    folder = tmp_path / "latest.ckpt"
    for epoch in (1, 2, 3):
        model.layers[0].kernel.assign(np.full((4, 3), epoch, np.float32))
        save_checkpoint(str(folder), model, metadata={"epoch": epoch})
    assert sorted(os.listdir(folder)) == ["checkpoint", "ckpt-3.data-00000-of-00001",
                                          "ckpt-3.index", "ckpt-3.json"]
    model.layers[0].kernel.assign(np.zeros((4, 3), np.float32))
    assert load_checkpoint(str(folder), model)["epoch"] == 3
    assert float(model.layers[0].kernel.numpy()[0, 0]) == 3
    moved = tmp_path / "elsewhere" / "latest.ckpt"  # the pointer names it relative to its folder
    shutil.copytree(folder, moved)
    model.layers[0].kernel.assign(np.zeros((4, 3), np.float32))
    os.remove(folder / "ckpt-3.index")  # the pointer names a checkpoint that is gone
    assert load_checkpoint(str(moved), model)["epoch"] == 3
    assert float(model.layers[0].kernel.numpy()[0, 0]) == 3
    with pytest.raises(FileNotFoundError, match="names no checkpoint file"):
        load_checkpoint(str(folder), model)


def _check_resume(cfg):
    RunDir(cfg.run.logdir).check_resume(cfg.as_flags(), config.RUN_IDENTITY)


def test_resuming_a_finetune_run_with_other_targets_is_refused(tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    started = dict(mode="finetune", weightbits=[3, 3], prune_to=[5, 9], float_epochs=2)
    (logdir / "config.json").write_text(json.dumps(started))
    fake_checkpoint(logdir)
    same = trainer.TrainConfig.from_flags(logdir=str(logdir), **dict(started, prune_to=(5, 9)))
    _check_resume(same)  # a tuple is the run's list
    for name, value in (("weightbits", [2, 3]), ("prune_to", [5, 8]), ("float_epochs", 1)):
        cfg = trainer.TrainConfig.from_flags(logdir=str(logdir), **dict(started, **{name: value}))
        with pytest.raises(trainer.UsageError, match=f"`{name}`. Received: .* on resuming"):
            _check_resume(cfg)


def test_resuming_an_admm_run_with_another_ranking_is_refused(tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    started = trainer.TrainConfig.from_flags(logdir=str(logdir), nnz_budget=0.1, bit_budget=4)
    (logdir / "config.json").write_text(json.dumps(started.as_flags()))
    fake_checkpoint(logdir)
    _check_resume(trainer.TrainConfig.from_flags(logdir=str(logdir), nnz_budget=0.1,
                                                 bit_budget=4, importance=None))  # unset: same
    with pytest.raises(trainer.UsageError, match="`importance`. Received: 'lamp' on resuming"):
        _check_resume(started.replace(importance="lamp"))


def test_weights_loaded_from_a_trained_runs_checkpoint_bring_no_optimizer_step(tmp_path):
    """A fine-tuning started from a compression run's checkpoint starts its own schedule."""
    import keras

    from sqjl_tf.checkpoint import load_checkpoint, save_checkpoint

    def model():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])

    trained = model()
    trained.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    trained.fit(np.ones((8, 4)), np.ones((8, 3)), epochs=3, batch_size=4, verbose=0)
    assert int(trained.optimizer.iterations.numpy()) == 6
    path = save_checkpoint(str(tmp_path / "latest.ckpt"), trained, trained.optimizer)
    started = model()
    load_checkpoint(path, started)  # --pretrain=<run>: the weights alone
    np.testing.assert_array_equal(started.layers[0].kernel.numpy(),
                                  trained.layers[0].kernel.numpy())
    started.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    started.optimizer.build(started.trainable_variables)
    assert int(started.optimizer.iterations.numpy()) == 0
