"""The arguments of a run: ``TrainConfig``, validated once, before any file is written.

Names and meanings are the reference's flags (``run.py`` exposes each field as the
flag of its name). The ADMM options are defined, and validated, once, in
:class:`sqjl_tf.admm.ADMMConfig`; :func:`admm_config` takes every field of it that
``TrainConfig`` has, by name.

Example:
    >>> cfg = resolved(TrainConfig(mode="compress", nnz_budget=0.02, bit_budget=3))
    >>> cfg.validate()  # UsageError on any bad argument
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Optional, Sequence

from sqjl_tf._usage import UsageError
from sqjl_tf.checkpoint import exists as checkpoint_exists
from sqjl_tf.rundir import RunDir

if TYPE_CHECKING:  # the ADMM module imports TensorFlow
    from sqjl_tf.admm import ADMMConfig

MODES = ("compress", "pretrain", "finetune", "evaluate")
OPTIMIZERS = ("sgd", "adam")
EXPORTS = ("keras", "saved_model", "compressed", "tflite")


@dataclasses.dataclass
class TrainConfig:
    """Arguments of :func:`sqjl_tf.trainer.run`; names and meanings as the reference's flags.

    ``dataset``, ``arch`` and ``data_dir`` left None are taken from ``from_run``'s
    run when given, else ``dataset="mnist"``, ``arch="caffelenet"``.
    """

    mode: str = "compress"
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    arch: Optional[str] = None
    workers: int = 4
    epochs: int = 90
    warmupT: float = 0.0
    start_epoch: int = 0
    batch_size: int = 128
    lr: float = 0.1
    lr_sched: str = "cos"
    bit_budget: float = 8.0
    nnz_budget: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    rho: float = 1e-3
    rho_growth: float = 1.0
    gclip: float = 0.0
    projint: int = 0
    dualint: int = 0
    pretrain: Optional[str] = None
    logdir: str = "log"
    save_every: int = 0
    mgpu: bool = False
    log_interval: int = -1
    seed: Optional[int] = None
    eval_tr: bool = False
    prox: bool = False
    dp: float = 0.0
    quant: bool = False
    prune: bool = False
    bwlb: int = 1
    bits_epoch: Optional[int] = None
    kdtemp: float = 0.0
    teacher: Optional[str] = None
    optim: str = "sgd"
    fixedbits: bool = False
    weightbits: Optional[Sequence[int]] = None
    float_epochs: int = 0
    keep_support: bool = False
    train_centres: bool = False
    prune_to: Optional[Sequence[int]] = None
    prune_epochs: int = 0
    from_run: Optional[str] = None
    overwrite: bool = False
    target_rate: Optional[float] = None  # the one-call pipeline (sqjl_tf.compress)
    export: Sequence[str] = ("keras", "saved_model", "compressed")
    limit: Optional[int] = None
    image_size: int = 224
    nan_recover: int = 0
    importance: str = "magnitude"

    # ------------------------------------------------------------ validation
    def _validate_target_rate(self, bad, finite) -> None:
        if not (finite(self.target_rate) and float(self.target_rate) >= 4):
            bad("target_rate", self.target_rate, "a compression rate >= 4 (e.g. 533)")
        if self.mode != "compress":
            bad("target_rate", self.target_rate, "unset unless --mode=compress")
        if self.nnz_budget != 1.0 or self.bit_budget != 8.0:
            bad("target_rate", self.target_rate, "unset with --nnz_budget/--bit_budget (the "
                "reference's ADMM stage alone), or given alone: the pipeline chooses the split")
        if self.epochs < 3:
            bad("epochs", self.epochs, "an integer >= 3 with --target_rate (one per stage)")
        for name in ("prune", "quant", "kdtemp", "float_epochs", "prune_to", "weightbits",
                     "from_run"):
            if getattr(self, name, None):
                bad(name, getattr(self, name), "unset with --target_rate (the pipeline's "
                    "stages set it)")

    def validate(self) -> None:
        """Checks every argument and combination; raises :class:`UsageError`."""

        def bad(name, value, expected):
            raise UsageError(
                f"Invalid value for argument `{name}`. Received: {value!r}. Expected {expected}."
            )

        def finite(x):
            try:
                return math.isfinite(float(x))
            except (TypeError, ValueError):
                return False

        if self.mode not in MODES:
            bad("mode", self.mode, f"one of {', '.join(MODES)}")
        if self.optim.lower() not in OPTIMIZERS:
            bad("optim", self.optim, f"one of {', '.join(OPTIMIZERS)}")
        if self.quant and self.prune:
            bad("quant", self.quant, "not both --quant and --prune (use neither for joint compression)")
        try:
            admm_config(self)  # the ADMM options: validated where they are defined
        except ValueError as err:
            raise UsageError(str(err)) from None
        if not (finite(self.lr) and float(self.lr) > 0):
            bad("lr", self.lr, "a finite float > 0")
        if self.target_rate is not None:
            self._validate_target_rate(bad, finite)
        for name in ("momentum", "weight_decay", "gclip", "warmupT", "dp", "kdtemp"):
            value = getattr(self, name)
            if not (finite(value) and float(value) >= 0):
                bad(name, value, "a finite float >= 0")
        if not float(self.momentum) < 1:
            bad("momentum", self.momentum, "a float in [0, 1)")
        if not float(self.dp) < 1:
            bad("dp", self.dp, "a float in [0, 1)")
        for name, low in (("epochs", 1), ("batch_size", 1), ("workers", 1), ("start_epoch", 0),
                          ("image_size", 8), ("nan_recover", 0), ("save_every", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= low):
                bad(name, value, f"an integer >= {low}")
        if self.start_epoch >= self.epochs:
            bad("start_epoch", self.start_epoch, f"an integer < epochs={self.epochs}")
        if self.limit is not None and not (isinstance(self.limit, int) and self.limit > 0):
            bad("limit", self.limit, "a positive integer")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            bad("seed", self.seed, f"an integer in [0, {2**32 - 1}]")
        for fmt in self.export:
            if fmt not in EXPORTS:
                bad("export", fmt, f"a comma list of {', '.join(EXPORTS)}")
        if self.weightbits is not None:
            if self.mode != "finetune":
                bad("weightbits", self.weightbits, "only with --mode=finetune")
            if not self.weightbits or not all(isinstance(b, int) and 1 <= b <= 8
                                              for b in self.weightbits):
                bad("weightbits", self.weightbits, "a comma list of integers in [1, 8], one per "
                    "compressible layer")
        if not (isinstance(self.float_epochs, int) and self.float_epochs >= 0):
            bad("float_epochs", self.float_epochs, "an integer >= 0")
        if self.float_epochs and self.mode != "finetune":
            bad("float_epochs", self.float_epochs, "0 unless --mode=finetune")
        if self.keep_support and self.mode != "finetune":
            bad("keep_support", self.keep_support, "False unless --mode=finetune")
        if self.prune_to is not None:
            if self.mode != "finetune":
                bad("prune_to", self.prune_to, "only with --mode=finetune")
            if not self.prune_to or not all(isinstance(n, int) and n >= 0 for n in self.prune_to):
                bad("prune_to", self.prune_to, "a comma list of integers >= 0, one per "
                    "compressible layer")
        if not (isinstance(self.prune_epochs, int) and 0 <= self.prune_epochs <= self.float_epochs):
            bad("prune_epochs", self.prune_epochs,
                f"an integer in [0, float_epochs={self.float_epochs}] (pruning is done in full "
                "precision)")
        if self.prune_epochs and self.prune_to is None:
            bad("prune_epochs", self.prune_epochs, "0 without --prune_to")
        if self.train_centres and self.mode != "finetune":
            bad("train_centres", self.train_centres, "False unless --mode=finetune")
        if self.teacher is not None:
            if not float(self.kdtemp) > 0:
                bad("teacher", self.teacher, "no teacher unless kdtemp > 0")
            if not _model_source(self.teacher):
                bad("teacher", self.teacher, "an existing model file (.keras, .weights.h5, .sqjl), "
                    "checkpoint folder or run folder of the uncompressed pretrained model")
        if self.mode in ("finetune", "evaluate") and not self.pretrain:
            bad("pretrain", self.pretrain, f"a model file for --mode={self.mode}")
        if self.pretrain and self.pretrain != "keras" and not _model_source(self.pretrain):
            bad("pretrain", self.pretrain, "an existing .keras, .weights.h5 or .sqjl file, a "
                "checkpoint folder (latest.ckpt) or a run folder holding one, a torchvision "
                "AlexNet state dict (.pth, or .torch.npz), or 'keras' for keras.applications "
                "ImageNet weights")
        try:
            from sqjl_tf.schedules import parse_lr_schedule

            parse_lr_schedule(self.lr_sched, self.lr, steps_per_epoch=1, epochs=self.epochs,
                              warmup_epochs=self.warmupT)
        except ValueError as err:
            raise UsageError(str(err)) from err
        from sqjl_tf.data import available_datasets
        from sqjl_tf.models import available_models

        dataset, arch = self.dataset or "", self.arch or ""  # None: resolved by run()
        if dataset.lower().replace("-", "_") not in available_datasets() + ("fmnist",):
            bad("dataset", self.dataset, f"one of {', '.join(available_datasets())}")
        models = available_models()
        if arch.lower() not in {m.lower() for m in models}:
            builtin = [m for m in models if not m.startswith("keras.")]
            apps = [m for m in models if m.startswith("keras.")]
            bad("arch", self.arch, f"one of {', '.join(builtin)}, or keras.<Application> for a "
                f"keras.applications model ({', '.join(apps)})")
        if self.mode != "evaluate":
            RunDir(self.logdir).check_writable()


_DEFAULTS = {"dataset": "mnist", "arch": "caffelenet"}


def admm_config(cfg: TrainConfig) -> "ADMMConfig":
    """The ``ADMMConfig`` of a run: every field of it that ``TrainConfig`` has, by name.

    An ADMM option is defined (and validated) once, in ``ADMMConfig``; a field
    of the same name in ``TrainConfig`` and a flag in ``run.py`` expose it.
    """
    from sqjl_tf.admm import ADMMConfig  # noqa: F811 (at run time)

    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ADMMConfig)
               if f.name != "mode" and hasattr(cfg, f.name)}
    return ADMMConfig(mode="quant" if cfg.quant else "prune" if cfg.prune else "joint",
                      **options)


def _model_source(path: str) -> bool:
    """Whether ``path`` names a model file, a checkpoint folder or a run folder holding one."""
    return os.path.isfile(path) or checkpoint_exists(path) or checkpoint_exists(
        os.path.join(path, RunDir.LATEST))


def resolved(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with what it leaves to be worked out filled in (``from_run``, defaults).

    A fine-tuning ``from_run`` (a finished compression run's folder) starts from
    that run's trained weights W (``latest.ckpt``, unpruned) and ends at its
    allocation: ``weightbits`` = ``allocated_bits``, ``prune_to`` =
    ``allocated_nnz`` of its ``final.json``; ``dataset``, ``data_dir`` and
    ``arch`` not given are the run's (a different ``arch`` is an error). Without
    ``from_run``, ``dataset`` and ``arch`` not given take their defaults.
    """
    if cfg.from_run is None:
        return dataclasses.replace(
            cfg, **{k: v for k, v in _DEFAULTS.items() if getattr(cfg, k) is None})

    def bad(expected):
        raise UsageError(f"Invalid value for argument `from_run`. Received: {cfg.from_run!r}. "
                         f"Expected {expected}.")

    if cfg.mode != "finetune":
        bad("no run unless --mode=finetune")
    given = [name for name in ("pretrain", "weightbits", "prune_to")
             if getattr(cfg, name) is not None]
    if given:
        bad(f"no --{', --'.join(given)} beside it (it sets them from the run)")
    run_dir = RunDir(cfg.from_run, "from_run")
    ckpt = run_dir.file(RunDir.LATEST)
    if not (all(os.path.isfile(run_dir.file(n)) for n in (RunDir.CONFIG, RunDir.FINAL))
            and checkpoint_exists(ckpt)):
        bad(f"a finished compression run's folder (with {RunDir.CONFIG}, {RunDir.FINAL} and "
            f"{RunDir.LATEST})")
    record = run_dir.read_json(RunDir.FINAL, bad)
    bits, nnz = record.get("allocated_bits"), record.get("allocated_nnz")
    if record.get("mode") != "compress" or not bits or not nnz:
        bad("a joint compression run whose final.json has allocated_bits and allocated_nnz "
            f"(found mode {record.get('mode')!r})")
    if not all(isinstance(v, list) and all(isinstance(n, int) and n >= 0 for n in v)
               for v in (bits, nnz)):
        bad(f"a final.json whose allocated_bits and allocated_nnz are lists of integers "
            f"(found {bits!r} and {nnz!r})")
    run_config = run_dir.read_json(RunDir.CONFIG, bad)
    run_arch = run_config.get("arch", _DEFAULTS["arch"])
    if not isinstance(run_arch, str):
        bad(f"a config.json whose arch is a name (found {run_arch!r})")
    if cfg.arch is not None and cfg.arch.lower() != run_arch.lower():
        raise UsageError(f"Invalid value for argument `arch`. Received: {cfg.arch!r}. Expected "
                         f"the --from_run run's architecture ({run_arch!r}), or no --arch.")
    taken = {k: run_config.get(k, _DEFAULTS.get(k)) for k in ("dataset", "data_dir", "arch")
             if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, pretrain=ckpt, weightbits=[int(b) for b in bits],
                               prune_to=[int(n) for n in nnz], **taken)



# What a run is: resuming with another value of one of these is a different run (the
# fine-tuning ones shape the state its checkpoints hold).
RUN_IDENTITY = ("mode", "dataset", "arch", "nnz_budget", "bit_budget", "quant", "prune",
                 "target_rate", "weightbits", "prune_to", "float_epochs", "prune_epochs",
                 "keep_support", "train_centres")



def check_multi_worker(cfg: TrainConfig) -> None:
    """Refuses, under several workers (TF_CONFIG), what the custom loop does not run."""
    unsupported = {
        "target_rate": (cfg.target_rate is not None, "the one-call pipeline runs on Keras fit"),
        "mode": (cfg.mode == "finetune", "quantized fine-tuning runs on Keras fit"),
        "kdtemp": (cfg.kdtemp > 0, "distillation runs on Keras fit"),
        "eval_tr": (cfg.eval_tr, "the training-set evaluation runs Keras evaluate"),
        "lr_sched": (cfg.lr_sched.startswith("plat"), "the plateau schedule needs fit's "
                     "validation loss"),
        "nan_recover": (cfg.nan_recover > 0, "recovery restarts fit; the loop stops with the "
                        "error"),
    }
    for name, (used, why) in unsupported.items():
        if used:
            raise UsageError(
                f"Invalid value for argument `{name}`. Received: {getattr(cfg, name)!r} with "
                f"TF_CONFIG set (several workers). Expected it unset there: {why}, which does "
                "not run under MultiWorkerMirroredStrategy. Run it on one machine (--mgpu for "
                "several GPUs).")
