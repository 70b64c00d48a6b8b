"""ADMM compression through model.fit: budgets, modes, prox step, resume."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import fakedata
import sqjl_tf
from sqjl_tf.checkpoint import load_checkpoint, read_arrays, save_checkpoint

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _task(n=1024, seed=0):
    return fakedata.linear_task(n, seed)


def _model(seed=0):
    return fakedata.mlp(48, seed)


def _pretrained(seed=0):
    x, y = _task()
    model = _model(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, shuffle=False)
    return model


def _compress(model, cb, epochs=3, lr=0.05, **fit_kw):
    x, y = _task()
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(lr, momentum=0.9), cb)
    model.compile(optimizer=opt, loss=LOSS, metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=False,
                        callbacks=[cb], **fit_kw)
    return history


def _accuracy(model):
    x, y = _task(seed=0)
    return float(np.mean(np.argmax(model.predict(x, verbose=0), 1) == y))


@pytest.fixture(scope="module")
def pretrained_weights():
    return _pretrained().get_weights()


def _fresh(weights):
    model = _model()
    model.set_weights(weights)
    return model


def test_joint_compression_holds_budget_and_keeps_accuracy(pretrained_weights):
    model = _fresh(pretrained_weights)
    dense_acc = _accuracy(model)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.4, bit_budget=4, rho=0.05)  # 20x
    history = _compress(model, cb, epochs=4, validation_data=_task(256, seed=1))
    compressed = cb.finalize()
    report = sqjl_tf.compression_report(compressed, budget_bits=cb.state.budget_bits)
    assert report.within_budget
    assert report.compression_rate >= 32 * report.total_weights / cb.state.budget_bits  # ~20x
    for stats, bits in zip(report.layers, cb.state.current_bits):
        assert stats.distinct <= 2**bits
    assert _accuracy(compressed) >= min(0.9, dense_acc - 0.05)
    logs = history.history
    for key in ("admm_residual", "compression_rate", "val_accuracy", "bits/" + cb.state.kernels[0].name):
        assert key in logs and len(logs[key]) == 4
    # Validation measured the finalised model: its accuracy equals the shipped model's.
    x_val, y_val = _task(256, seed=1)
    val_acc = float(np.mean(np.argmax(compressed.predict(x_val, verbose=0), 1) == y_val))
    assert logs["val_accuracy"][-1] == pytest.approx(val_acc, abs=1e-6)
    # Training weights were restored after validation: W is not the finalised W.
    assert not np.array_equal(model.layers[0].kernel.numpy(), compressed.layers[0].kernel.numpy())
    # sparse_weights: W pruned to the budget with the current widths, not quantized; the
    # finalised kernels are those quantized (no new nonzero), and W is left unchanged.
    w_before = [k.variable.numpy().copy() for k in cb.state.kernels]
    sparse, final = cb.state.sparse_weights(), cb.state.finalized_weights()
    assert sum(b * np.count_nonzero(w) for b, w in zip(cb.state.current_bits, sparse)) \
        <= cb.state.budget_bits
    for w, s_w, f_w in zip(w_before, sparse, final):
        kept = s_w != 0
        np.testing.assert_array_equal(s_w[kept], w[kept])
        assert not np.any(f_w[~kept])
    for k, w in zip(cb.state.kernels, w_before):
        np.testing.assert_array_equal(k.variable.numpy(), w)


def test_prune_only_keeps_float_weights_within_nnz(pretrained_weights):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.25, mode="prune")
    _compress(model, cb, epochs=2)
    compressed = cb.finalize()
    report = sqjl_tf.compression_report(compressed)
    sizes = [s.size for s in report.layers]
    assert report.total_nnz <= sum(int(np.ceil(0.25 * n)) for n in sizes)
    assert cb.state.current_bits == [32, 32]
    assert cb.state.duplicates == []  # no V/U in prune mode
    assert all(s.distinct > 0.9 * s.nnz for s in report.layers)  # not quantized


def test_quant_only_keeps_every_weight(pretrained_weights):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(bit_budget=3, mode="quant", rho=0.05)
    _compress(model, cb, epochs=2)
    compressed = cb.finalize()
    report = sqjl_tf.compression_report(compressed, budget_bits=cb.state.budget_bits)
    assert report.within_budget
    assert report.total_nnz >= 0.95 * report.total_weights  # no pruning
    for stats, bits in zip(report.layers, cb.state.current_bits):
        assert stats.distinct <= 2**bits


def test_fixedbits_and_bits_epoch(pretrained_weights):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.3, bit_budget=3.7, fixedbits=True, rho=0.05)
    history = _compress(model, cb, epochs=2)
    assert cb.state.current_bits == [3, 3]
    assert history.history["bits/" + cb.state.kernels[0].name] == [3.0, 3.0]

    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.1, bit_budget=4, bits_epoch=1, rho=0.05)
    history = _compress(model, cb, epochs=3)
    per_epoch = [history.history["bits/" + k.name] for k in cb.state.kernels]
    for series in per_epoch:  # after epoch 1 the widths stop changing
        assert series[1] == series[2] == series[0]


def test_projection_schedule_counts_batches(pretrained_weights):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.2, bit_budget=4, projint=4, dualint=8, rho=0.05)
    calls = {"sparse": 0, "dual": 0}
    _compress(model, cb, epochs=1)  # 16 batches
    state = cb.state
    for name in calls:
        original = getattr(state, f"{name}_step")

        def counted(original=original, name=name):
            calls[name] += 1
            original()

        setattr(state, f"{name}_step", counted)
    x, y = _task()
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False, callbacks=[cb])
    assert calls == {"sparse": 4, "dual": 2}
    assert int(state.step.numpy()) == 32


def test_prox_step_matches_formula():
    model = _model()
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.5, bit_budget=4, rho=0.5)
    state = cb.build(model)
    state.start()
    lr = 0.1
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(lr), cb)
    variables = model.trainable_variables
    grads = [tf.random.normal(v.shape, seed=i) for i, v in enumerate(variables)]
    before = [v.numpy() for v in variables]
    opt.apply(grads, variables)
    beta = lr * 0.5
    for v, w0, g in zip(variables, before, grads):
        stepped = w0 - lr * g.numpy()
        j = state.index_of(v)
        if j is None:  # biases: plain SGD
            np.testing.assert_allclose(v.numpy(), stepped, rtol=1e-6, atol=1e-7)
        else:
            vv, uu = state.duplicates[j].numpy(), state.duals[j].numpy()
            expected = (stepped + beta * (vv - uu)) / (1 + beta)
            np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_penalty_gradient_and_weight_decay_without_prox():
    model = _model()
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.5, bit_budget=4, rho=0.5, prox=False)
    state = cb.build(model)
    state.start()
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.1), cb, weight_decay=0.01)
    variables = model.trainable_variables
    grads = [tf.ones(v.shape) for v in variables]
    before = [v.numpy() for v in variables]
    opt.apply(grads, variables)
    for v, w0 in zip(variables, before):
        j = state.index_of(v)
        if j is None:  # bias: no decay, no penalty
            np.testing.assert_allclose(v.numpy(), w0 - 0.1, rtol=1e-6)
        else:
            g = 1 + 0.01 * w0 + 0.5 * (w0 - state.duplicates[j].numpy() + state.duals[j].numpy())
            np.testing.assert_allclose(v.numpy(), w0 - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_optimizer_serializes():
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01, momentum=0.9), weight_decay=5e-4, gclip=1.0)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, sqjl_tf.ADMMOptimizer)
    assert clone.l2 == 5e-4 and clone.gclip == 1.0
    assert isinstance(clone.inner_optimizer, keras.optimizers.SGD)
    assert float(clone.learning_rate) == pytest.approx(0.01)


def test_resume_matches_uninterrupted_run(tmp_path, pretrained_weights):
    def fresh_run():
        model = _fresh(pretrained_weights)
        cb = sqjl_tf.ADMMCallback(nnz_budget=0.2, bit_budget=4, rho=0.05)
        opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), cb, weight_decay=1e-4)
        model.compile(optimizer=opt, loss=LOSS)
        return model, cb, opt

    x, y = _task()
    fit = dict(batch_size=64, verbose=0, shuffle=False)
    model, cb, _ = fresh_run()
    model.fit(x, y, epochs=3, callbacks=[cb], **fit)
    uninterrupted = [w.numpy() for w in model.weights]

    model, cb, opt = fresh_run()
    model.fit(x, y, epochs=1, callbacks=[cb], **fit)
    path = os.path.join(tmp_path, "latest.ckpt")
    save_checkpoint(path, model, opt, cb.state, {"epoch": 1})

    model, cb, opt = fresh_run()
    state = cb.build(model)
    meta = load_checkpoint(path, model, opt, state)
    model.fit(x, y, initial_epoch=meta["epoch"], epochs=3, callbacks=[cb], **fit)
    for a, b in zip(uninterrupted, [w.numpy() for w in model.weights]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_rejects_other_architecture(tmp_path):
    model = _model()
    path = os.path.join(tmp_path, "latest.ckpt")
    prefix = save_checkpoint(path, model)
    other = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="different architecture"):
        load_checkpoint(path, other)
    with open(prefix + ".index", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="Invalid checkpoint: unreadable index"):
        load_checkpoint(path, model)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(nnz_budget=0.0), "nnz_budget"),
        (dict(nnz_budget=1.5), "nnz_budget"),
        (dict(bit_budget=9), "bit_budget"),
        (dict(bit_budget=3, bwlb=4), "bwlb"),
        (dict(projint=3, dualint=4), "dualint"),
        (dict(mode="both"), "mode"),
        (dict(rho=-1.0), "rho"),
        (dict(importance="hessian"), "importance"),
        (dict(rho_growth=0.5), "rho_growth"),
        (dict(rho_growth=float("inf")), "rho_growth"),
    ],
)
def test_callback_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        sqjl_tf.ADMMCallback(**kwargs)


def test_schedule_with_steps_per_execution(pretrained_weights):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.2, bit_budget=4, projint=4, dualint=8, rho=0.05)
    x, y = _task()
    model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.05), cb), loss=LOSS,
                  steps_per_execution=4)
    cb.build(model)
    calls = {"sparse": 0, "dual": 0}
    for name in calls:
        original = getattr(cb.state, f"{name}_step")

        def counted(original=original, name=name):
            calls[name] += 1
            original()

        setattr(cb.state, f"{name}_step", counted)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False, callbacks=[cb])
    # 16 batches in chunks of 4: start (1 each) + every 4th / 8th batch + epoch end (1 each)
    assert int(cb.state.step.numpy()) == 16
    assert calls == {"sparse": 1 + 4, "dual": 1 + 2}


def test_fisher_importance_tracks_squared_gradients_and_holds_budget(pretrained_weights, tmp_path):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.2, bit_budget=3, rho=0.05, projint=4, dualint=4,
                              importance="fisher", unit_floor=False)
    _compress(model, cb, epochs=2)
    state = cb.state
    fisher = [f.numpy() for f in state.fisher]
    assert [f.shape for f in fisher] == [tuple(k.variable.shape) for k in state.kernels]
    assert all(np.all(f >= 0) and np.any(f > 0) for f in fisher)
    report = sqjl_tf.compression_report(cb.finalize(), budget_bits=state.budget_bits)
    assert report.within_budget
    # The sparse step ranks by (fisher + a small floor) * w^2: from the dense weights it keeps
    # what that ranking keeps, which is not what w^2 alone keeps.
    dense = [w for w in pretrained_weights if w.ndim == 2]
    for k, w in zip(state.kernels, dense):
        k.variable.assign(w)
    state.sparse_step()
    floor = np.float32(1e-6 * np.mean(np.concatenate([f.ravel() for f in fisher])))
    by_fisher, _ = sqjl_tf.projections.sparse_projection(
        dense, state.current_bits, state.budget_bits, importance=[f + floor for f in fisher])
    by_magnitude, _ = sqjl_tf.projections.sparse_projection(
        dense, state.current_bits, state.budget_bits)
    kept = [k.variable.numpy() != 0 for k in state.kernels]
    assert all(np.array_equal(a, b != 0) for a, b in zip(kept, by_fisher))
    assert any(np.any(a != (b != 0)) for a, b in zip(kept, by_magnitude))
    # The moving averages are part of the checkpointed state.
    path = save_checkpoint(str(tmp_path / "latest.ckpt"), model, admm_state=state)
    for f in state.fisher:
        f.assign(tf.zeros_like(f))
    load_checkpoint(path, model, admm_state=state)
    assert all(np.array_equal(f.numpy(), g) for f, g in zip(state.fisher, fisher))


def test_lamp_importance_ranks_each_layer_by_its_own_scale(pretrained_weights):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.1, bit_budget=3, rho=0.05, projint=4, dualint=4,
                              importance="lamp", unit_floor=False)
    _compress(model, cb, epochs=1)
    state = cb.state
    assert not state.fisher  # no gradient statistics kept for it
    report = sqjl_tf.compression_report(cb.finalize(), budget_bits=state.budget_bits)
    assert report.within_budget and all(layer.nnz > 0 for layer in report.layers)
    # From the dense weights with the second layer shrunk 1000x: the sparse step keeps the same
    # weights as before (each layer normalized by its own values), where w^2 would drop it.
    dense = [w for w in pretrained_weights if w.ndim == 2]
    kept = []
    for shrink in (1.0, 1e-3):
        for i, (k, w) in enumerate(zip(state.kernels, dense)):
            k.variable.assign(w * (shrink if i == 1 else 1.0))
        state.sparse_step()
        kept.append([k.variable.numpy() != 0 for k in state.kernels])
    assert all(np.array_equal(a, b) for a, b in zip(*kept)) and kept[1][1].any()
    shrunk = [dense[0], 1e-3 * dense[1]] + dense[2:]
    _, by_magnitude = sqjl_tf.projections.sparse_projection(
        shrunk, state.current_bits, state.budget_bits)
    assert by_magnitude[1] == 0


def test_rho_growth_scales_rho_and_duals_and_is_checkpointed(pretrained_weights, tmp_path):
    model = _fresh(pretrained_weights)
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.2, bit_budget=3, rho=0.05, rho_growth=2.0)
    history = _compress(model, cb, epochs=2)
    state = cb.state
    # rho doubles at each epoch end (the logs show the rho each epoch trained with).
    assert history.history["rho"] == pytest.approx([0.05, 0.1])
    assert float(state.rho.numpy()) == pytest.approx(0.2)
    # The scaled duals are divided by the growth, so the multipliers rho * U carry over.
    before = [u.numpy() for u in state.duals]
    state._grow_rho()
    assert float(state.rho.numpy()) == pytest.approx(0.4)
    for u, u0 in zip(state.duals, before):
        np.testing.assert_allclose(0.4 * u.numpy(), 0.2 * u0, rtol=1e-6, atol=1e-9)
    # The prox step uses the current rho: beta = lr * rho.
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.1), cb)
    variables = model.trainable_variables
    grads = [tf.random.normal(v.shape, seed=i) for i, v in enumerate(variables)]
    before = [v.numpy() for v in variables]
    opt.apply(grads, variables)
    beta = 0.1 * 0.4
    for v, w0, g in zip(variables, before, grads):
        j = state.index_of(v)
        if j is not None:
            stepped = w0 - 0.1 * g.numpy()
            vv, uu = state.duplicates[j].numpy(), state.duals[j].numpy()
            expected = (stepped + beta * (vv - uu)) / (1 + beta)
            np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6)
    # rho is part of the checkpointed state.
    path = save_checkpoint(str(tmp_path / "latest.ckpt"), model, admm_state=state)
    assert float(read_arrays(path)["admm/rho"]) == pytest.approx(0.4)
    state.rho.assign(1.0)
    load_checkpoint(path, model, admm_state=state)
    assert float(state.rho.numpy()) == pytest.approx(0.4)
    # The budget holds with a growing rho too.
    assert sqjl_tf.compression_report(cb.finalize(), budget_bits=state.budget_bits).within_budget
