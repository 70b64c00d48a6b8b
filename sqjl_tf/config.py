"""The arguments of a run: six groups in one ``TrainConfig``, validated before any file is written.

A run's arguments are grouped by what they configure (:class:`RunConfig`,
:class:`DataConfig`, :class:`ModelConfig`, :class:`OptimConfig`, the ADMM
stage's :class:`sqjl_tf.admm.ADMMConfig`, :class:`FinetuneConfig`). Every field
also has a flat name, the reference's flag of that name: ``run.py``'s flags,
``trainer.run(**kwargs)`` and a run's ``config.json`` use the flat names
(:meth:`TrainConfig.from_flags`, :meth:`TrainConfig.as_flags`); the one
exception is the ADMM mode, the reference's ``--quant`` / ``--prune``.

Example:
    >>> cfg = resolved(TrainConfig.from_flags(mode="compress", nnz_budget=0.02, bit_budget=3))
    >>> cfg.admm.nnz_budget, cfg.optim.lr
    (0.02, 0.1)
    >>> cfg.validate()  # UsageError on any bad argument or combination
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, Optional, Sequence

from sqjl_tf._usage import UsageError, invalid_argument
from sqjl_tf.admm import ADMMConfig
from sqjl_tf.checkpoint import exists as checkpoint_exists
from sqjl_tf.pipeline import Recipe
from sqjl_tf.rundir import RunDir

MODES = ("compress", "pretrain", "finetune", "evaluate")
OPTIMIZERS = ("sgd", "adam")
EXPORTS = ("keras", "saved_model", "compressed", "tflite")


def _bad(name: str, value, expected: str):
    raise invalid_argument(name, value, expected, UsageError)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _check_ints(group, lows: Dict[str, int]) -> None:
    for name, low in lows.items():
        value = getattr(group, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            _bad(name, value, f"an integer >= {low}")


@dataclasses.dataclass
class RunConfig:
    """What the run is and where it writes: its mode, folder, seed, records and exports."""

    mode: str = "compress"
    logdir: str = "log"
    overwrite: bool = False
    seed: Optional[int] = None
    save_every: int = 0
    log_interval: int = -1
    eval_tr: bool = False
    mgpu: bool = False
    export: Sequence[str] = ("keras", "saved_model", "compressed")
    target_rate: Optional[float] = None  # the one-call pipeline (sqjl_tf.compress)

    def validate(self) -> None:
        if self.mode not in MODES:
            _bad("mode", self.mode, f"one of {', '.join(MODES)}")
        _check_ints(self, {"save_every": 0})
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            _bad("seed", self.seed, f"an integer in [0, {2**32 - 1}]")
        for fmt in self.export:
            if fmt not in EXPORTS:
                _bad("export", fmt, f"a comma list of {', '.join(EXPORTS)}")
        if self.target_rate is not None and not (
                _finite(self.target_rate) and float(self.target_rate) >= 4):
            _bad("target_rate", self.target_rate, "a compression rate >= 4 (e.g. 533)")


@dataclasses.dataclass
class DataConfig:
    """The dataset and its input pipeline. ``dataset``/``data_dir`` None: see :func:`resolved`."""

    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    batch_size: int = 128
    workers: int = 4
    limit: Optional[int] = None
    image_size: int = 224

    def validate(self) -> None:
        from sqjl_tf.data import available_datasets

        _check_ints(self, {"batch_size": 1, "workers": 1, "image_size": 8})
        if self.limit is not None and not (isinstance(self.limit, int) and self.limit > 0):
            _bad("limit", self.limit, "a positive integer")
        dataset = self.dataset or ""  # None: resolved by run()
        if dataset.lower().replace("-", "_") not in available_datasets() + ("fmnist",):
            _bad("dataset", self.dataset, f"one of {', '.join(available_datasets())}")


@dataclasses.dataclass
class ModelConfig:
    """The architecture, the model a run starts from, and a distillation teacher."""

    arch: Optional[str] = None
    pretrain: Optional[str] = None
    dp: float = 0.0
    teacher: Optional[str] = None

    def validate(self) -> None:
        from sqjl_tf.models import available_models

        if not (_finite(self.dp) and 0 <= float(self.dp) < 1):
            _bad("dp", self.dp, "a float in [0, 1)")
        if self.pretrain and self.pretrain != "keras" and not _model_source(self.pretrain):
            _bad("pretrain", self.pretrain, "an existing .keras, .weights.h5 or .sqjl file, a "
                 "checkpoint folder (latest.ckpt) or a run folder holding one, a torchvision "
                 "AlexNet state dict (.pth, or .torch.npz), or 'keras' for keras.applications "
                 "ImageNet weights")
        models, arch = available_models(), self.arch or ""
        if arch.lower() not in {m.lower() for m in models}:
            builtin = [m for m in models if not m.startswith("keras.")]
            apps = [m for m in models if m.startswith("keras.")]
            _bad("arch", self.arch, f"one of {', '.join(builtin)}, or keras.<Application> for a "
                 f"keras.applications model ({', '.join(apps)})")


@dataclasses.dataclass
class OptimConfig:
    """The optimizer, its learning-rate schedule, the epochs, distillation and NaN recovery."""

    optim: str = "sgd"
    lr: float = 0.1
    lr_sched: str = "cos"
    momentum: float = 0.9
    weight_decay: float = 0.0
    gclip: float = 0.0
    warmupT: float = 0.0
    epochs: int = 90
    start_epoch: int = 0
    kdtemp: Optional[float] = None  # None: compress's rule (target_rate); 0.0 elsewhere
    nan_recover: int = 0

    @property
    def distils(self) -> bool:
        """Whether the training distils from a teacher (``kdtemp`` given and > 0)."""
        return self.kdtemp is not None and float(self.kdtemp) > 0

    def validate(self) -> None:
        if self.optim.lower() not in OPTIMIZERS:
            _bad("optim", self.optim, f"one of {', '.join(OPTIMIZERS)}")
        if not (_finite(self.lr) and float(self.lr) > 0):
            _bad("lr", self.lr, "a finite float > 0")
        for name in ("momentum", "weight_decay", "gclip", "warmupT", "kdtemp"):
            value = getattr(self, name)
            if name == "kdtemp" and value is None:  # unset
                continue
            if not (_finite(value) and float(value) >= 0):
                _bad(name, value, "a finite float >= 0")
        if not float(self.momentum) < 1:
            _bad("momentum", self.momentum, "a float in [0, 1)")
        _check_ints(self, {"epochs": 1, "start_epoch": 0, "nan_recover": 0})
        if self.start_epoch >= self.epochs:
            _bad("start_epoch", self.start_epoch, f"an integer < epochs={self.epochs}")

    def check_schedule(self) -> None:
        """Parses ``lr_sched`` (it logs the schedule: checked after everything else)."""
        try:
            from sqjl_tf.schedules import parse_lr_schedule

            parse_lr_schedule(self.lr_sched, self.lr, steps_per_epoch=1, epochs=self.epochs,
                              warmup_epochs=self.warmupT)
        except ValueError as err:
            raise UsageError(str(err)) from err


@dataclasses.dataclass
class FinetuneConfig:
    """Quantized fine-tuning (``mode="finetune"``): the widths and supports it ends at."""

    weightbits: Optional[Sequence[int]] = None
    float_epochs: int = 0
    keep_support: bool = False
    train_centres: bool = False
    prune_to: Optional[Sequence[int]] = None
    prune_epochs: int = 0
    from_run: Optional[str] = None

    def validate(self) -> None:
        if self.weightbits is not None and (not self.weightbits or not all(
                isinstance(b, int) and 1 <= b <= 8 for b in self.weightbits)):
            _bad("weightbits", self.weightbits, "a comma list of integers in [1, 8], one per "
                 "compressible layer")
        _check_ints(self, {"float_epochs": 0})
        if self.prune_to is not None and (not self.prune_to or not all(
                isinstance(n, int) and n >= 0 for n in self.prune_to)):
            _bad("prune_to", self.prune_to, "a comma list of integers >= 0, one per "
                 "compressible layer")
        if not (isinstance(self.prune_epochs, int) and 0 <= self.prune_epochs <= self.float_epochs):
            _bad("prune_epochs", self.prune_epochs,
                 f"an integer in [0, float_epochs={self.float_epochs}] (pruning is done in full "
                 "precision)")
        if self.prune_epochs and self.prune_to is None:
            _bad("prune_epochs", self.prune_epochs, "0 without --prune_to")

    def used(self) -> Dict[str, Any]:
        """The fields set away from their defaults (only fine-tuning may set them)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default and f.name != "from_run"}


# The ADMM options are the fields of ADMMConfig (defined and validated there), but for its
# mode, which the reference's flags set as --quant / --prune; --prox defaults to off there.
_ADMM_FLAG_DEFAULTS = {"prox": False}
_GROUPS = {"run": RunConfig, "data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
           "admm": ADMMConfig, "finetune": FinetuneConfig}


def _flag_groups() -> Dict[str, str]:
    """Each flat name (flag, ``config.json`` key) and the group holding it."""
    names = {}
    for group, cls in _GROUPS.items():
        for field in dataclasses.fields(cls):
            if not (group == "admm" and field.name == "mode"):
                assert field.name not in names, f"two groups have a field {field.name!r}"
                names[field.name] = group
    names.update(quant="admm", prune="admm")
    return names


FLAG_GROUPS = _flag_groups()


@dataclasses.dataclass
class TrainConfig:
    """Arguments of :func:`sqjl_tf.trainer.run`, by group; names and meanings: the reference's.

    Build it from the flat names with :meth:`from_flags`. ``dataset``, ``arch``
    and ``data_dir`` left None are taken from ``from_run``'s run when given,
    else ``dataset="mnist"``, ``arch="caffelenet"`` (:func:`resolved`).
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    admm: ADMMConfig = dataclasses.field(
        default_factory=lambda: ADMMConfig(**_ADMM_FLAG_DEFAULTS))
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    @classmethod
    def from_flags(cls, **flags: Any) -> "TrainConfig":
        """The config of the flat arguments (``run.py``'s flags, a ``config.json``).

        Raises:
            UsageError: on an unknown name, ``quant`` with ``prune``, or an
                invalid ADMM option (the rest is checked by :meth:`validate`).
        """
        unknown = sorted(set(flags) - set(FLAG_GROUPS))
        if unknown:
            raise UsageError(f"Unexpected argument `{unknown[0]}`. Expected one of: "
                             f"{', '.join(sorted(FLAG_GROUPS))}.")
        quant, prune = bool(flags.pop("quant", False)), bool(flags.pop("prune", False))
        if quant and prune:
            _bad("quant", quant, "not both --quant and --prune (use neither for joint "
                 "compression)")
        if flags.get("kdtemp") is None and flags.get("target_rate") is None:
            flags["kdtemp"] = 0.0  # unset: off (the one-call pipeline decides for itself)
        if flags.get("importance") is None:  # unset: the mode's own default
            flags["importance"] = (Recipe.importance if flags.get("target_rate") is not None
                                   else ADMMConfig.importance)
        parts = {group: {} for group in _GROUPS}
        parts["admm"].update(_ADMM_FLAG_DEFAULTS, mode="quant" if quant else
                             "prune" if prune else "joint")
        for name, value in flags.items():
            parts[FLAG_GROUPS[name]][name] = value
        try:
            admm = ADMMConfig(**parts.pop("admm"))
        except ValueError as err:  # ADMMConfig validates itself
            raise UsageError(str(err)) from None
        return cls(admm=admm, **{group: _GROUPS[group](**kw) for group, kw in parts.items()})

    def as_flags(self) -> Dict[str, Any]:
        """The flat arguments (what ``config.json`` holds; :meth:`from_flags` reads them back)."""
        flat = {}
        for group in _GROUPS:
            flat.update(dataclasses.asdict(getattr(self, group)))
        flat.pop("mode")  # the ADMM one; the run's is put back below
        flat.update(mode=self.run.mode, quant=self.admm.mode == "quant",
                    prune=self.admm.mode == "prune")
        return flat

    def replace(self, **flags: Any) -> "TrainConfig":
        """A copy with the given flat arguments changed."""
        return TrainConfig.from_flags(**{**self.as_flags(), **flags})

    def validate(self) -> None:
        """Checks every group, then the combinations; raises :class:`UsageError`."""
        for group in ("run", "optim", "finetune", "model", "data"):
            getattr(self, group).validate()  # the ADMM group validated itself when built
        mode, finetune = self.run.mode, self.finetune
        if self.run.target_rate is not None:
            self._validate_target_rate()
        if mode != "finetune":
            for name, value in finetune.used().items():
                _bad(name, value, _finetune_only(value))
        if self.model.teacher is not None:
            if not self.optim.distils:
                _bad("teacher", self.model.teacher, "no teacher unless kdtemp > 0")
            if not _model_source(self.model.teacher):
                _bad("teacher", self.model.teacher, "an existing model file (.keras, .weights.h5, "
                     ".sqjl), checkpoint folder or run folder of the uncompressed pretrained "
                     "model")
        if mode in ("finetune", "evaluate") and not self.model.pretrain:
            _bad("pretrain", self.model.pretrain, f"a model file for --mode={mode}")
        self.optim.check_schedule()
        if mode != "evaluate":
            RunDir(self.run.logdir).check_writable()

    def _validate_target_rate(self) -> None:
        rate, admm = self.run.target_rate, self.admm
        if self.run.mode != "compress":
            _bad("target_rate", rate, "unset unless --mode=compress")
        if admm.nnz_budget != 1.0 or admm.bit_budget != 8.0:
            _bad("target_rate", rate, "unset with --nnz_budget/--bit_budget (the reference's "
                 "ADMM stage alone), or given alone: the pipeline chooses the split")
        if self.optim.epochs < 3:
            _bad("epochs", self.optim.epochs, "an integer >= 3 with --target_rate (one per stage)")
        stage_set = {"prune": admm.mode == "prune", "quant": admm.mode == "quant",
                     **self.finetune.used(), "from_run": self.finetune.from_run}
        for name, value in stage_set.items():
            if value:
                _bad(name, value, "unset with --target_rate (the pipeline's stages set it)")
        if self.model.teacher is not None:
            _bad("teacher", self.model.teacher, "unset with --target_rate (the pipeline distils "
                 "from the model it starts from)")
        # The training settings that compress's Recipe sets: a value given here would be ignored.
        default = TrainConfig()
        for group, names in _SET_BY_RECIPE.items():
            for name in names:
                value = getattr(getattr(self, group), name)
                if value != getattr(getattr(default, group), name):
                    _bad(name, value, f"the default ({getattr(getattr(default, group), name)!r}) "
                         "with --target_rate: the pipeline's stages set it (sqjl_tf.Recipe); "
                         "give --nnz_budget/--bit_budget to run the ADMM stage with it")


def _finetune_only(value) -> str:
    """What a fine-tuning option must be outside ``--mode=finetune``."""
    if isinstance(value, (list, tuple)):
        return "only with --mode=finetune"
    return f"{'False' if isinstance(value, bool) else '0'} unless --mode=finetune"


_DEFAULTS = {"dataset": "mnist", "arch": "caffelenet"}


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
    flags = cfg.as_flags()
    from_run = flags["from_run"]
    if from_run is None:
        return cfg.replace(**{k: v for k, v in _DEFAULTS.items() if flags[k] is None})

    def bad(expected):
        raise UsageError(f"Invalid value for argument `from_run`. Received: {from_run!r}. "
                         f"Expected {expected}.")

    if cfg.run.mode != "finetune":
        bad("no run unless --mode=finetune")
    given = [name for name in ("pretrain", "weightbits", "prune_to") if flags[name] is not None]
    if given:
        bad(f"no --{', --'.join(given)} beside it (it sets them from the run)")
    run_dir = RunDir(from_run, "from_run")
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
    arch = cfg.model.arch
    if arch is not None and arch.lower() != run_arch.lower():
        raise UsageError(f"Invalid value for argument `arch`. Received: {arch!r}. Expected "
                         f"the --from_run run's architecture ({run_arch!r}), or no --arch.")
    taken = {k: run_config.get(k, _DEFAULTS.get(k)) for k in ("dataset", "data_dir", "arch")
             if flags[k] is None}
    return cfg.replace(pretrain=ckpt, weightbits=[int(b) for b in bits],
                       prune_to=[int(n) for n in nnz], **taken)


# Settings of run.py that a --target_rate run does not use (compress's Recipe sets them).
_SET_BY_RECIPE = {
    "optim": ("optim", "lr", "lr_sched", "momentum", "weight_decay", "gclip", "nan_recover"),
    "admm": ("rho", "projint", "dualint", "bwlb", "fixedbits", "bits_epoch", "prox", "rho_growth",
             "unit_floor"),
}


# What a run is: resuming with another value of one of these is a different run (the
# fine-tuning ones shape the state its checkpoints hold).
RUN_IDENTITY = ("mode", "dataset", "arch", "nnz_budget", "bit_budget", "quant", "prune",
                "target_rate", "weightbits", "prune_to", "float_epochs", "prune_epochs",
                "keep_support", "train_centres", "importance", "kdtemp")


def check_multi_worker(cfg: TrainConfig) -> None:
    """Refuses, under several workers (TF_CONFIG), what the custom loop does not run."""
    run, optim = cfg.run, cfg.optim
    unsupported = {
        "target_rate": (run.target_rate is not None, "the one-call pipeline runs on Keras fit"),
        "mode": (run.mode == "finetune", "quantized fine-tuning runs on Keras fit"),
        "kdtemp": (optim.distils, "distillation runs on Keras fit"),
        "eval_tr": (run.eval_tr, "the training-set evaluation runs Keras evaluate"),
        "lr_sched": (optim.lr_sched.startswith("plat"), "the plateau schedule needs fit's "
                     "validation loss"),
        "nan_recover": (optim.nan_recover > 0, "recovery restarts fit; the loop stops with the "
                        "error"),
    }
    flags = cfg.as_flags()
    for name, (used, why) in unsupported.items():
        if used:
            raise UsageError(
                f"Invalid value for argument `{name}`. Received: {flags[name]!r} with "
                f"TF_CONFIG set (several workers). Expected it unset there: {why}, which does "
                "not run under MultiWorkerMirroredStrategy. Run it on one machine (--mgpu for "
                "several GPUs).")
