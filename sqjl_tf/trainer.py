"""The trainer behind ``run.py``: one function, plain arguments, four modes.

``run(mode="compress", ...)`` does what the reference's ``train.py`` did;
``mode="finetune"`` its ``finetune.py``; ``mode="pretrain"`` trains a dense
model (so a user without one has one command for it); ``mode="evaluate"``
prints accuracy and the compression report. Each mode is one function
(``_compress``, ``_finetune``, ``_pretrain``, ``_evaluate``): the first three
add their own callbacks to the training all modes share (``_fit``) and hand
their final model to ``_finish``, which exports and measures it. Every argument is validated before
any data is read (:mod:`sqjl_tf.config`), and the data and the models are read
and checked against the arguments (:mod:`sqjl_tf.model_io`) before any file of
the run folder (:class:`sqjl_tf.rundir.RunDir`) is written.

Example:
    >>> from sqjl_tf import trainer
    >>> trainer.run(mode="compress", dataset="fashion_mnist", arch="caffelenet",
    ...             nnz_budget=0.02, bit_budget=3, epochs=30, lr=0.1, rho=0.05,
    ...             prox=True, pretrain="runs/dense/model_dense.keras", logdir="runs/500x")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, Dict, Optional

from absl import logging

from sqjl_tf._data_order import ITERATIONS_PER_EPOCH, skip_iterations
from sqjl_tf._files import atomic_path
from sqjl_tf._quiet import tensorflow_info_off
from sqjl_tf._usage import UsageError
from sqjl_tf.checkpoint import exists as checkpoint_exists
from sqjl_tf.config import RUN_IDENTITY, TrainConfig, check_multi_worker, resolved
from sqjl_tf.model_io import built_model, check_finetune_targets, checked_load, short_error
from sqjl_tf.rundir import RunDir


# ---------------------------------------------------------------- building
def _strategy(cfg: TrainConfig):
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cfg.run.mgpu:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not os.environ.get("TF_CONFIG"):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def _optimizer(cfg: TrainConfig, steps_per_epoch: int, admm=None):
    import keras

    from sqjl_tf.optimizer import ADMMOptimizer
    from sqjl_tf.schedules import ScaledSchedule, parse_lr_schedule

    opt = cfg.optim
    schedule = ScaledSchedule(parse_lr_schedule(opt.lr_sched, opt.lr, steps_per_epoch,
                                                epochs=opt.epochs, warmup_epochs=opt.warmupT))
    if opt.optim.lower() == "adam":
        inner = keras.optimizers.Adam(learning_rate=schedule)
    else:
        inner = keras.optimizers.SGD(learning_rate=schedule, momentum=opt.momentum)
    return ADMMOptimizer(inner, admm, weight_decay=opt.weight_decay, gclip=opt.gclip)


def _metrics():
    import keras

    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
    ]


_FLOAT_KERAS = RunDir.model_file("model_float", ".keras")  # a float-first fine-tuning's


# ------------------------------------------------------------------- modes
def run(**kwargs: Any) -> Dict[str, Any]:
    """Runs one job (see :class:`TrainConfig` for the arguments).

    Returns:
        The final record: accuracy and top-5 of the final model on the test
        split, its compression report, and the paths written.

    Raises:
        UsageError: on any invalid argument, before any work: the arguments
            themselves, then what needs the data and the models (damaged data
            files, a batch larger than the training split, unreadable or
            unfitting model files, ``weightbits`` / ``prune_to`` not fitting the
            model). Nothing is written before the data and the models are read.
        FileNotFoundError: if the dataset is missing (the message says which
            files to put where).
    """
    arch_given = kwargs.get("arch") is not None  # else the default, or the pretrain file's
    cfg = resolved(TrainConfig.from_flags(**kwargs))
    cfg.validate()
    run_dir = RunDir(cfg.run.logdir)
    if cfg.run.mode != "evaluate":
        if cfg.run.overwrite:
            run_dir.check_overwrite()
        else:
            run_dir.check_resume(cfg.as_flags(), RUN_IDENTITY)
    import keras
    import tensorflow as tf

    if cfg.run.seed is not None:
        keras.utils.set_random_seed(cfg.run.seed)
        tf.config.experimental.enable_op_determinism()
    strategy = _strategy(cfg)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        check_multi_worker(cfg)
    test_ds, test_info = _load_split(cfg, "test")
    if cfg.run.mode == "evaluate":
        return _evaluate(cfg, test_ds, test_info, arch_given)
    train_ds, info = _load_split(cfg, "train")
    with strategy.scope():
        model = (checked_load(cfg, info, arch_given=arch_given) if cfg.model.pretrain
                 else built_model(cfg, info))
        teacher = checked_load(cfg, info, "teacher") if cfg.model.teacher else None
    if cfg.run.mode == "finetune":
        check_finetune_targets(cfg, model)
    if cfg.data.limit is None and cfg.data.batch_size > info.num_examples:  # --limit: one batch
        raise UsageError(
            f"Invalid value for argument `batch_size`. Received: {cfg.data.batch_size}. Expected an"
            f" integer in [1, {info.num_examples}] (the training split has {info.num_examples} "
            "examples).")
    if not _is_chief(strategy):
        return _run_in_logdir(cfg, strategy, model, teacher, train_ds, test_ds, info)
    with run_dir.locked():
        return _run_in_logdir(cfg, strategy, model, teacher, train_ds, test_ds, info)


def _load_split(cfg: TrainConfig, split: str):
    """``load_dataset`` of ``split``; a damaged data file is a usage error naming ``data_dir``."""
    from sqjl_tf.data import load_dataset

    resize = max(cfg.data.image_size * 8 // 7, cfg.data.image_size)
    try:
        return load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.batch_size, split,
                            seed=cfg.run.seed if split == "train" else None, limit=cfg.data.limit,
                            num_parallel_calls=cfg.data.workers, image_size=cfg.data.image_size,
                            resize_size=resize)
    except ValueError as err:  # the arguments are valid: the files are not
        raise UsageError(
            f"Invalid value for argument `data_dir`. Received: {cfg.data.data_dir!r}. Expected "
            f"readable {cfg.data.dataset} files ({short_error(err)})."
        ) from err


@dataclasses.dataclass
class _Job:
    """What a training mode is given: its arguments, models and data, and where it resumes."""

    cfg: TrainConfig
    strategy: Any
    model: Any
    teacher: Any
    train_ds: Any
    test_ds: Any
    steps_per_epoch: int
    resume: Optional[str]  # the checkpoint to resume from

    @property
    def is_chief(self) -> bool:
        return _is_chief(self.strategy)


def _run_in_logdir(cfg, strategy, model, teacher, train_ds, test_ds, info):
    """Starts (or resumes) the run in its folder and runs its mode (the chief holds the lock)."""
    run_dir = RunDir(cfg.run.logdir)
    if _is_chief(strategy):
        resume = run_dir.prepare(cfg.run.overwrite)
        run_dir.write_json(RunDir.CONFIG, cfg.as_flags())
    else:  # other workers read the chief's checkpoint, never write
        latest = run_dir.file(RunDir.LATEST)
        resume = latest if checkpoint_exists(latest) and not cfg.run.overwrite else None
    job = _Job(cfg, strategy, model, teacher, train_ds, test_ds,
               max(1, math.ceil(info.num_examples / cfg.data.batch_size)), resume)
    return _MODES[cfg.run.mode](job)


def _compress(job: _Job) -> Dict[str, Any]:
    """``mode="compress"``: ADMM toward the budget (the reference's ``train.py``).

    With ``target_rate``, the one-call pipeline (:mod:`sqjl_tf.compress_run`) instead.
    """
    cfg = job.cfg
    if cfg.run.target_rate is not None:
        from sqjl_tf.compress_run import run_compress

        with job.strategy.scope():
            return run_compress(cfg, job.model, job.train_ds, job.test_ds, job.steps_per_epoch,
                                lambda c, m: _export(c, m) if job.is_chief else {}, _accuracy)
    admm = admm_callback(cfg)
    with job.strategy.scope():
        admm.build(job.model)
        _fit(job, [admm], admm=admm)
    # Outside the strategy: the final model has plain variables (exports read them freely).
    final = admm.finalize(job.model)
    sparse = None  # pruned, full precision: a float-first fine-tuning's start
    if admm.state.config.mode == "joint" and "keras" in cfg.run.export:
        sparse = admm.finalize(job.model, quantize=False)
    return _finish(job, final, admm, sparse)


def _finetune(job: _Job) -> Dict[str, Any]:
    """``mode="finetune"``: quantized fine-tuning to fixed widths (the reference's finetune.py)."""
    from sqjl_tf.finetune import QuantizedFinetuneCallback

    cfg = job.cfg
    ft = cfg.finetune
    finetune = QuantizedFinetuneCallback(weightbits=ft.weightbits, float_epochs=ft.float_epochs,
                                         reserve_zero=not ft.keep_support,
                                         train_centres=ft.train_centres, prune_to=ft.prune_to,
                                         prune_epochs=ft.prune_epochs)
    callbacks = [finetune]
    float_path = RunDir(cfg.run.logdir).file(_FLOAT_KERAS)
    if cfg.finetune.float_epochs and job.is_chief and "keras" in cfg.run.export:
        callbacks.append(_float_model_saver(job.model, cfg.finetune.float_epochs, float_path))
    with job.strategy.scope():
        _fit(job, callbacks, finetune=finetune)
    float_file = float_path if cfg.finetune.float_epochs and os.path.isfile(float_path) else None
    return _finish(job, finetune.finalize(), float_file=float_file)


def _pretrain(job: _Job) -> Dict[str, Any]:
    """``mode="pretrain"``: trains the dense model (a start for the other modes)."""
    import keras

    with job.strategy.scope():
        _fit(job, [])
    final = keras.models.clone_model(job.model)  # plain variables, outside the strategy
    final.set_weights(job.model.get_weights())
    return _finish(job, final, dense=True)


_MODES = {"compress": _compress, "finetune": _finetune, "pretrain": _pretrain}


def admm_callback(cfg: TrainConfig):
    """The ``ADMMCallback`` a compression run with these arguments uses.

    Also rebuilds the ADMM state of a finished run (its ``config.json``) to
    load one of its checkpoints into.

    Args:
        cfg: the run's arguments (``TrainConfig.from_flags(**json.load(config.json))``).

    Returns:
        An unbuilt ``sqjl_tf.ADMMCallback``.
    """
    from sqjl_tf.callback import ADMMCallback

    return ADMMCallback(**dataclasses.asdict(cfg.admm), per_layer_logs=True)


def load_admm_run(logdir: str, model=None, checkpoint: str = RunDir.LATEST):
    """Loads a compression run's checkpoint: the model, its ADMM state and the metadata.

    Args:
        logdir: the run's folder (``config.json`` of mode "compress", and the checkpoint).
        model: a built model of the run's architecture to load into (None: the run's
            ``model_compressed.keras``, written when it finished).
        checkpoint: the checkpoint's folder name in ``logdir``.

    Returns:
        ``(model, state, meta)``: the model holding the trained weights W, the
        ``ADMMState`` (duplicates, duals, widths, rho), the checkpoint's metadata
        (``epoch``, ...).

    Raises:
        ValueError: if ``logdir`` is not a compression run or lacks the files.

    Example:
        >>> model, state, meta = load_admm_run("runs/lenet5_533x")
        >>> pruned = finalize_model(model, state, quantize=False)
    """
    import keras

    from sqjl_tf.checkpoint import load_checkpoint

    run_dir = RunDir(logdir)
    config_file, ckpt = run_dir.file(RunDir.CONFIG), run_dir.file(checkpoint)
    saved = run_dir.file(RunDir.model_file("model_compressed", ".keras"))
    needed = [config_file] + ([saved] if model is None else [])
    missing = [f for f in needed if not os.path.isfile(f)] + (
        [] if checkpoint_exists(ckpt) else [ckpt])
    if missing:
        raise ValueError(f"Invalid value for argument `logdir`. Received: {logdir!r}. Expected "
                         f"a compression run's folder (missing: {', '.join(missing)}).")
    with open(config_file) as f:
        cfg = TrainConfig.from_flags(**json.load(f))
    if cfg.run.mode != "compress":
        raise ValueError(f"Invalid value for argument `logdir`. Received: {logdir!r}, a run of "
                         f"mode {cfg.run.mode!r}. Expected a compression (ADMM) run.")
    if model is None:
        model = keras.models.load_model(saved, compile=False)
    state = admm_callback(cfg).build(model)
    meta = load_checkpoint(ckpt, model, admm_state=state)
    return model, state, meta


def _fit(job: _Job, mode_callbacks, admm=None, finetune=None) -> None:
    """Trains ``job.model`` from its start or its checkpoint, as every mode does.

    Around the mode's own callbacks (``mode_callbacks``: ADMM's, fine-tuning's),
    the same for every mode: the optimizer and its schedule, distillation, the
    non-finite guard, the plateau schedule, the records and checkpoints, and
    TensorBoard; ``fit``, or the custom loop under ``MultiWorkerMirroredStrategy``.
    Called under the strategy's scope.
    """
    import keras
    import tensorflow as tf

    from sqjl_tf.checkpoint import load_checkpoint
    from sqjl_tf.guards import NonFiniteGuard
    from sqjl_tf.run_logger import BatchLogger, ConsoleLogs, RunLogger, truncate_metrics

    cfg, strategy, student, teacher = job.cfg, job.strategy, job.model, job.teacher
    train_ds, test_ds, resume = job.train_ds, job.test_ds, job.resume
    callbacks = list(mode_callbacks)
    optimizer = _optimizer(cfg, job.steps_per_epoch, admm)
    trained = student
    if cfg.optim.distils:
        from sqjl_tf.distill import Distiller

        if teacher is None:  # the reference: the model loaded by --pretrain, frozen
            teacher = keras.models.clone_model(student)
            teacher.set_weights(student.get_weights())
        trained = Distiller(student, teacher, cfg.optim.kdtemp)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trained.compile(optimizer=optimizer, loss=loss, metrics=_metrics())
    schedule = optimizer.inner_optimizer._learning_rate  # a ScaledSchedule
    plateau = None
    if cfg.optim.lr_sched.startswith("plat"):  # plat,factor,threshold: by the validation loss
        plateau = schedule.callback(reset_on_train_begin=False)  # its state is checkpointed

    def training_state():  # what a NaN recovery restores, with the weights
        return _training_state(student, finetune, plateau)

    guard = NonFiniteGuard(_restorer(cfg, student, optimizer, admm, training_state),
                           schedule.scale, max_recoveries=cfg.optim.nan_recover)

    def run_state():  # all the checkpoint holds beside the weights, optimizer and ADMM state
        return dict(training_state(), **{"lr/scale": schedule.scale,
                                         "guard/recoveries": guard.recoveries_variable})

    # Built now, not in fit's first step: a variable made there costs a second trace of it.
    optimizer.build(trained.trainable_variables)
    initial_epoch = cfg.optim.start_epoch
    best = None  # RunLogger starts from the worst value
    if resume:
        if finetune is not None:
            finetune.build(trained)  # its variables, to restore (fit keeps them: same model)
        meta = load_checkpoint(resume, student, optimizer, admm.state if admm else None,
                               variables=run_state())
        initial_epoch = int(meta["epoch"])
        best = meta.get("best_value")
        if _is_chief(strategy):
            truncate_metrics(cfg.run.logdir, initial_epoch)  # epochs after the checkpoint's go
        logging.info("Resuming %s from epoch %d", resume, initial_epoch)
    skipped = initial_epoch if resume else 0  # epochs whose data a resumed run does not read
    state_fn = (lambda: admm.state) if admm else (lambda: None)
    if plateau is not None:  # before the logger: the checkpoint holds the epoch's decision
        callbacks.append(plateau)
    # One line per epoch: Keras's (a progress bar on a terminal), else the RunLogger's.
    fit_is_silent = cfg.run.log_interval > 0 or isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy)
    callbacks.append(RunLogger(cfg.run.logdir, optimizer, state_fn, cfg.run.save_every,
                               is_chief=_is_chief(strategy), best_value=best,
                               extra_eval=_train_eval(cfg, trained, admm), variables=run_state,
                               log_epochs=fit_is_silent))
    callbacks.append(keras.callbacks.TensorBoard(RunDir(cfg.run.logdir).file(RunDir.TENSORBOARD),
                                                 write_graph=False))
    callbacks.append(ConsoleLogs())  # per-layer entries: metrics.jsonl and TensorBoard only
    callbacks.insert(0, guard)
    if cfg.run.log_interval > 0:
        callbacks.append(BatchLogger(cfg.run.log_interval))
    if initial_epoch < cfg.optim.epochs:
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            skip_iterations(train_ds, skipped)  # the custom loop: one iteration per epoch
            epoch_callbacks = [cb for cb in callbacks if isinstance(cb, RunLogger) or (
                isinstance(cb, keras.callbacks.TensorBoard) and _is_chief(strategy))]
            _multi_worker_fit(cfg, trained, optimizer, admm, train_ds, test_ds, initial_epoch,
                              strategy, loss, epoch_callbacks)
        else:
            data, steps = _epoch_passes(train_ds, skipped)
            trained.fit(data, validation_data=test_ds, epochs=cfg.optim.epochs,
                        steps_per_epoch=steps,
                        initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False,
                        verbose=0 if fit_is_silent else 1 if sys.stdout.isatty() else 2)


def _float_model_saver(student, float_epochs: int, path: str):
    """A callback saving ``student`` at the end of the last full-precision epoch.

    The fine-tuning callback ends that epoch in full precision (it quantizes at the
    next epoch's start, or at the end of ``fit``), so the file is the pruned,
    trained float model: the start of any other quantization of the same support.
    """
    import keras

    class _Saver(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == float_epochs:
                _save_keras(student, path)
                logging.info("Saved the full-precision fine-tuned model to %s", path)

    return _Saver()


def _training_state(student, finetune, plateau) -> Dict[str, Any]:
    """The training state a checkpoint holds beside the weights, the optimizer and ADMM's.

    By checkpoint name: the random-seed states of the model's layers (dropout),
    the fine-tuning callback's variables (once built), the plateau-lowered
    rate and the plateau callback's counters. The learning-rate scale and the
    NaN recoveries are not in it: a NaN recovery restores this, not those.
    """
    state = {}
    weights = {id(w) for w in student.weights}
    seeds = [v for v in student.variables if id(v) not in weights
             and v.name.endswith("seed_generator_state")]  # not the metrics' variables
    state.update((f"seed/{i}", v) for i, v in enumerate(seeds))
    if finetune is not None and finetune.slots:
        state.update((f"finetune/{k}", v) for k, v in finetune.checkpoint_variables().items())
    if plateau is not None:
        state["lr/plateau"] = plateau.schedule.variable
        state.update((f"plateau/{k}", v) for k, v in plateau.checkpoint_variables().items())
    return state


def _epoch_passes(dataset, skipped_epochs: int = 0):
    """What ``fit`` reads, ``(data, steps_per_epoch)``: epoch ``e`` is iteration ``2e`` of ``dataset``.

    Each iteration of a seeded dataset has its own order (and augmentation).
    ``fit`` on the dataset itself makes iterators as its version sees fit (in
    Keras 3: one at each epoch's start, and the next epoch's ahead of time,
    never read), so which iteration epoch ``e`` reads is up to Keras. Here the
    dataset is read through one endless dataset that ``fit`` iterates once
    (``steps_per_epoch`` = the dataset's length): epoch ``e`` reads iteration
    ``2e`` and iteration ``2e + 1`` is made and dropped (one batch made, unused),
    the order Keras 3's own gives (so fresh runs read their data as before). A
    run resumed at epoch ``k`` first moves the dataset on by ``2k`` iterations:
    its epochs read what the uninterrupted run's read. A dataset of unknown
    length is given to ``fit`` as it is (a resumed run's data order is then
    not the uninterrupted run's).

    Args:
        dataset: the batched training split (finite).
        skipped_epochs: the epochs a resumed run starts after.

    Returns:
        ``(data, steps_per_epoch)`` for ``fit``.
    """
    import tensorflow as tf

    steps = int(dataset.cardinality())
    if steps <= 0:
        if skipped_epochs:
            logging.warning("The training data has no known length: the resumed run reads its "
                            "epochs in another order than the uninterrupted run.")
        return dataset, None
    skip_iterations(dataset, ITERATIONS_PER_EPOCH * skipped_epochs)

    def one_pass(i):  # i = 0: an epoch's data; i = 1: an iteration made and dropped
        read = tf.equal(i, 0)
        return dataset.take(tf.where(read, tf.constant(-1, tf.int64), 1)).filter(lambda *_: read)

    passes = tf.data.Dataset.range(ITERATIONS_PER_EPOCH).repeat().flat_map(one_pass)
    return passes, steps


def _restorer(cfg, model, optimizer, admm, variables):
    from sqjl_tf.checkpoint import load_checkpoint

    def restore() -> bool:
        path = RunDir(cfg.run.logdir).file(RunDir.LATEST)
        if not checkpoint_exists(path):
            return False
        load_checkpoint(path, model, optimizer, admm.state if admm else None,
                        variables=variables())
        return True

    return restore


def _train_eval(cfg, trained, admm):
    """``eval_tr``'s training-set evaluation, on its own copy of the split.

    Evaluating on the training dataset itself would move its shuffling on by
    iterations ``fit`` does not make, so a resumed run would read its epochs in
    another order than the uninterrupted run.
    """
    if not cfg.run.eval_tr:
        return None
    train_ds, _ = _load_split(cfg, "train")
    finalized = _finalized_evaluation(
        admm, lambda: trained.evaluate(train_ds, verbose=0, return_dict=True))

    def evaluate(epoch):
        return {f"train_{k}": v for k, v in finalized().items()}

    return evaluate


def _finalized_evaluation(admm, evaluate):
    """``evaluate()`` of the finalised model: the kernels are finalised, then restored."""
    def finalized():
        if admm is None:
            return evaluate()
        saved = admm.state.finalize_in_place()
        try:
            return evaluate()
        finally:
            admm.state.restore_kernels(saved)

    return finalized


def _multi_worker_fit(cfg, model, optimizer, admm, train_ds, test_ds, initial_epoch, strategy,
                      loss, callbacks):
    """Keras 3 fit does not run under MultiWorkerMirroredStrategy: the custom loop does.

    It drives the epoch callbacks ``fit`` would (the run's records and checkpoints,
    TensorBoard) with the same logs: the training loss, the ADMM logs, and the
    finalised model's test accuracy as ``val_accuracy``/``val_top5``, as the
    ADMM callback's validation in ``fit``. What the loop cannot run is refused
    by :func:`check_multi_worker` before any work.
    """
    import keras
    import tensorflow as tf

    from sqjl_tf.loop import train_loop

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    epoch_callbacks = keras.callbacks.CallbackList(callbacks, model=model)
    validate = _finalized_evaluation(admm, lambda: _accuracy(model, test_ds))

    def on_epoch_end(epoch, logs):
        logs.update({f"val_{k}": v for k, v in validate().items()})
        epoch_callbacks.on_epoch_end(epoch, logs)  # records and checkpoints: only the chief's
        if epoch + 1 < cfg.optim.epochs:
            epoch_callbacks.on_epoch_begin(epoch + 1)

    epoch_callbacks.on_train_begin()
    epoch_callbacks.on_epoch_begin(initial_epoch)
    train_loop(model, optimizer, train_ds.with_options(options), cfg.optim.epochs, loss,
               cfg.data.batch_size,
               state=admm.state if admm else None, strategy=strategy, initial_epoch=initial_epoch,
               on_epoch_end=on_epoch_end)
    epoch_callbacks.on_train_end()


def _finish(job: _Job, model, admm=None, sparse=None, float_file=None,
            dense: bool = False) -> Dict[str, Any]:
    """Exports the final model, measures it, and writes the run's record (``final.json``).

    ``dense``: the model is not compressed (pretraining): ``model_dense.keras``, no
    bit-packed file.
    """
    import keras
    import numpy as np

    from sqjl_tf.budget import compression_report
    from sqjl_tf.layers import compressible_kernels

    cfg, is_chief = job.cfg, job.is_chief
    run_dir = RunDir(cfg.run.logdir)
    files = _export(cfg, model, dense) if is_chief else {}  # before compile: no optimizer saved
    if sparse is not None and is_chief:
        files["keras_sparse"] = _save_keras(
            sparse, run_dir.file(RunDir.model_file("model_sparse", ".keras")))
    if float_file is not None:
        files["keras_float"] = float_file  # saved at the end of the full-precision phase
    scores = _accuracy(model, job.test_ds)
    budget = admm.state.budget_bits if admm else None
    try:
        report = compression_report(model, budget_bits=budget, file_sizes=not dense)
    except ValueError:  # a kernel with > 256 levels (e.g. prune-only): no bit-packed file
        report = compression_report(model, budget_bits=budget)
    record = {
        "mode": cfg.run.mode,
        "test_accuracy": float(scores["accuracy"]),
        "test_top5": float(scores["top5"]),
        "compression_rate": report.compression_rate,
        "size_bits": report.size_bits,
        "budget_bits": budget,
        "within_budget": report.within_budget,
        "allocated_bits": [int(b) for b in admm.state.current_bits] if admm else None,
        "allocated_nnz": None if sparse is None else [
            int(np.count_nonzero(keras.ops.convert_to_numpy(k.variable)))
            for k in compressible_kernels(sparse)],
        "layers": [{"name": s.name, "nnz": s.nnz, "density": s.density, "bits": s.bits}
                   for s in report.layers],
        "files": files,
        "file_bytes": report.file.total_bytes if report.file is not None else None,
        "file_rate": report.file.real_rate if report.file is not None else None,
    }
    if "tflite" in files:
        record["tflite_bytes"] = os.path.getsize(files["tflite"])
    if is_chief:
        run_dir.write_json(RunDir.FINAL, record)
    logging.info("compression report:\n%s", report)
    logging.info(
        "final: test_accuracy=%.4f test_top5=%.4f compression_rate=%.1fx size_bits=%d%s",
        record["test_accuracy"], record["test_top5"], record["compression_rate"],
        record["size_bits"], f" budget_bits={budget:.0f}" if budget else "",
    )
    return record


def _accuracy(model, dataset) -> Dict[str, float]:
    """Top-1 and top-5 accuracy by a plain loop (works under every strategy)."""
    import tensorflow as tf

    top1 = top5 = count = 0
    for x, y in dataset:
        logits = model(x, training=False)
        y = tf.cast(y, tf.int32)
        top1 += int(tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), y), tf.int32)))
        k = min(5, int(logits.shape[-1]))
        top5 += int(tf.reduce_sum(tf.cast(tf.math.in_top_k(y, logits, k), tf.int32)))
        count += int(tf.shape(y)[0])
    return {"accuracy": top1 / max(count, 1), "top5": top5 / max(count, 1)}


def _export(cfg, model, dense: bool = False) -> Dict[str, str]:
    files = {}
    run_dir = RunDir(cfg.run.logdir)
    name = "model_dense" if dense else "model_compressed"
    if "keras" in cfg.run.export or dense:
        files["keras"] = _save_keras(model, run_dir.file(RunDir.model_file(name, ".keras")))
    if "saved_model" in cfg.run.export:
        files["saved_model"] = run_dir.file(RunDir.SAVED_MODEL)
        with atomic_path(files["saved_model"], folder=True) as tmp:
            with tensorflow_info_off():
                model.export(tmp, verbose=False)
    if "compressed" in cfg.run.export and not dense:
        from sqjl_tf.export import save_compressed

        files["compressed"] = run_dir.file(RunDir.model_file(name, ".sqjl"))
        save_compressed(model, files["compressed"])
    if "tflite" in cfg.run.export:
        from sqjl_tf.export.tflite import save_tflite

        files["tflite"] = run_dir.file(RunDir.model_file(name, ".tflite"))
        save_tflite(model, files["tflite"])
    return files


def _save_keras(model, path: str) -> str:
    """Saves ``model`` to ``path`` atomically (a good file is never half replaced)."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def _evaluate(cfg, test_ds, info, arch_given=False):
    import keras

    from sqjl_tf.budget import compression_report

    model = checked_load(cfg, info, arch_given=arch_given)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=_metrics())
    scores = model.evaluate(test_ds, verbose=0, return_dict=True)
    report = compression_report(model)
    logging.info("compression report:\n%s", report)
    logging.info("evaluate: test_accuracy=%.4f test_top5=%.4f compression_rate=%.1fx",
                 scores["accuracy"], scores["top5"], report.compression_rate)
    return {"mode": "evaluate", "test_accuracy": float(scores["accuracy"]),
            "test_top5": float(scores["top5"]), "compression_rate": report.compression_rate,
            "size_bits": report.size_bits}
