"""sqjl_tf command line: the reference's train.py and finetune.py flags, in absl.

Examples:
    python run.py --mode=pretrain --dataset=fashion_mnist --arch=caffelenet --epochs=3 \
        --logdir=runs/lenet_dense
    python run.py --dataset=fashion_mnist --arch=caffelenet -b 256 --nnz_budget=0.02 \
        --bit_budget=3 --lr=0.05 --lr_sched=cos --epochs=15 --rho=0.05 --wd=5e-4 --prox \
        --momentum=0.93 --pretrain=runs/lenet_dense/model_dense.keras --logdir=runs/lenet_500x
    python run.py --arch=alexnet --nnz_budget=0.12 --bit_budget=6 --dataset=imagenet ...

Run ``python run.py --helpfull`` for every flag. Usage errors exit with status 2
before any work.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS

# --- the reference's train.py / finetune.py flags (same names, same meanings)
flags.DEFINE_string("dataset", "mnist", "dataset used in the experiment "
                    "(mnist, fashion_mnist, cifar10, imagenet)")
flags.DEFINE_string("data_dir", None, "dataset dir in this machine")
flags.DEFINE_string("arch", "caffelenet", "model architecture (caffelenet, resnet20, resnet50, "
                    "alexnet, mobilenetv1, resnet18, or keras.<Application>)", short_name="a")
flags.DEFINE_integer("workers", 4, "number of data loading workers", lower_bound=1, short_name="j")
flags.DEFINE_integer("epochs", 90, "number of total epochs to run", lower_bound=1)
flags.DEFINE_float("warmupT", 0.0, "number of epochs of linear learning-rate warm-up", lower_bound=0)
flags.DEFINE_integer("start_epoch", 0, "manual epoch number (useful on restarts)", lower_bound=0)
flags.DEFINE_integer("batch_size", 128, "mini-batch size (default: 128)", lower_bound=1,
                     short_name="b")
flags.DEFINE_float("lr", 0.1, "initial learning rate")
flags.DEFINE_string("lr_sched", "cos", "lr scheduler: cos[,min_lr] | step,m1,m2,... | exp,gamma "
                    "| plat,factor,threshold | const")
flags.DEFINE_float("bit_budget", 8.0, "bit budget ({1,2...,8})", lower_bound=1, upper_bound=8)
flags.DEFINE_float("nnz_budget", 1.0, "number of nonzero budget (0.0~1.0)")
flags.DEFINE_float("momentum", 0.9, "momentum", lower_bound=0)
flags.DEFINE_float("weight_decay", 0.0, "weight decay (L2 added to the gradient)", lower_bound=0)
flags.DEFINE_float("rho", 1e-3, "admm hyperparameter rho")
flags.DEFINE_float("rho_growth", 1.0, "multiply rho by this at the end of every epoch (1: constant "
                   "rho, as the reference; an extension)", lower_bound=1)
flags.DEFINE_float("gclip", 0.0, "gradient clip (infinity norm; 0: off)", lower_bound=0)
flags.DEFINE_integer("projint", 0, "how many batches to wait before sparse projection of primal "
                     "weights (0: end of each epoch)", lower_bound=0)
flags.DEFINE_integer("dualint", 0, "how many batches to wait before updating duplicate and dual "
                     "weights (0: end of each epoch)", lower_bound=0)
flags.DEFINE_bool("evaluate", False, "evaluate model on validation set (= --mode=evaluate)",
                  short_name="e")
flags.DEFINE_string("pretrain", None, "file to load pretrained model (.keras, .weights.h5, .sqjl, "
                    "a checkpoint folder, a run folder (its latest.ckpt), or 'keras' for keras.applications "
                    "weights)")
flags.DEFINE_string("logdir", "log", "The directory used to save the trained models")
flags.DEFINE_integer("save-every", 0, "Saves checkpoints at every specified number of epochs",
                     lower_bound=0)
flags.DEFINE_bool("mgpu", False, "enable using multiple gpus (MirroredStrategy)")
flags.DEFINE_integer("log_interval", -1, "how many batches to wait before logging training status "
                     "(-1: one line per epoch)")
flags.DEFINE_integer("seed", None, "random seed (also makes TF ops deterministic)")
flags.DEFINE_bool("eval_tr", False, "evaluate training set")
flags.DEFINE_bool("prox", False, "use proximal op for primal update")
flags.DEFINE_float("dp", 0.0, "dropout rate", lower_bound=0, upper_bound=0.99)
flags.DEFINE_bool("quant", False, "only perform quantization")
flags.DEFINE_bool("prune", False, "only perform pruning")
flags.DEFINE_integer("bwlb", 1, "the lower bound of bitwidth", lower_bound=1, upper_bound=8)
flags.DEFINE_integer("bits_epoch", None, "maximum epochs allowing update bits", lower_bound=0)
flags.DEFINE_float("kdtemp", None, "knowledge distillation temperature (0: off; unset: off, "
                   "or with --target_rate distilled at 4 where the model has memorised its "
                   "training data, as sqjl_tf.Recipe)", lower_bound=0)
flags.DEFINE_enum("optim", "sgd", ["sgd", "adam", "SGD", "Adam"], "optimizer to use")
flags.DEFINE_bool("fixedbits", False, "use fixed bitwidth")
flags.DEFINE_list("weightbits", None, "mannual weightbits (finetune: one width per layer)")
# --- sqjl_tf additions
flags.DEFINE_integer("float_epochs", 0, "finetune: epochs of full-precision training on the frozen "
                     "support before quantizing (TFMOT's prune-then-cluster order)", lower_bound=0)
flags.DEFINE_bool("keep_support", False, "finetune: codebooks of nonzero centres only, so no kept "
                  "weight rounds to zero (TFMOT's sparsity-preserving clustering)")
flags.DEFINE_bool("train_centres", False, "finetune: train the codebooks' centres by gradient "
                  "(Adam) in the quantized epochs instead of re-fitting them (TFMOT's clustering)")
flags.DEFINE_list("prune_to", None, "finetune: nonzeros each layer ends with (e.g. a compression "
                  "run's allocated_nnz, from its final.json); the support shrinks to them")
flags.DEFINE_integer("prune_epochs", 0, "finetune: full-precision epochs over which the support "
                     "shrinks to --prune_to (cubic schedule; 0: at once)", lower_bound=0)
flags.DEFINE_string("from_run", None, "finetune: a finished compression run's folder; start from "
                    "its trained weights (latest.ckpt) and end at its allocation (sets "
                    "--pretrain, --weightbits, --prune_to from its final.json, and --dataset, "
                    "--data_dir, --arch not given from its config.json)")
flags.DEFINE_string("teacher", None, "with --kdtemp: the uncompressed pretrained model to distil "
                    "from (default: the --pretrain model, as the reference)")
flags.DEFINE_enum("mode", "compress", ["compress", "pretrain", "finetune", "evaluate"],
                  "compress (train.py), finetune (finetune.py), pretrain (dense training), "
                  "evaluate (accuracy and compression report)")
flags.DEFINE_bool("overwrite", False, "start afresh in an existing logdir instead of resuming it")
flags.DEFINE_list("export", ["keras", "saved_model", "compressed"],
                  "what to write at the end: keras, saved_model, compressed, tflite")
flags.DEFINE_integer("image_size", 224, "ImageNet crop size (evaluation resizes to 8/7 of it first)",
                     lower_bound=8)
flags.DEFINE_enum("importance", None, ["magnitude", "fisher", "lamp"],
                  "value of a weight in the sparse projection: w^2 (the paper), w^2 times its "
                  "moving-average squared gradient (diagonal Fisher), or w^2 over the sum of its "
                  "layer's values at least as large (LAMP: layer-scale invariant); extensions "
                  "(default: magnitude with --nnz_budget/--bit_budget, as the reference; lamp with "
                  "--target_rate, as sqjl_tf.Recipe)")
flags.DEFINE_bool("unit_floor", True, "a layer the sparse projection would leave with fewer "
                  "nonzeros than output units keeps the largest weight of each unit, so no layer "
                  "is pruned to zero (an extension; --nounit_floor: the reference's plain ranking)")
flags.DEFINE_integer("nan_recover", 0, "on a NaN/inf loss, restore the last checkpoint and halve "
                     "the learning rate, at most this many times (0: stop with an error)",
                     lower_bound=0)
flags.DEFINE_float("target_rate", None, "compress to this rate (e.g. 533 for 533x) with the "
                   "one-call pipeline, sqjl_tf.compress: ADMM learns the allocation, then "
                   "gradual pruning and quantized fine-tuning, all within --epochs (the "
                   "benchmark's best recipe). Without it, --mode=compress is the reference's ADMM "
                   "stage alone, at --nnz_budget and --bit_budget")
flags.DEFINE_integer("limit", None, "use only the first N examples of each split (smoke runs)",
                     lower_bound=1)

flags.DEFINE_alias("wd", "weight_decay")
flags.DEFINE_alias("learning-rate", "lr")
flags.DEFINE_alias("epoch", "epochs")
flags.DEFINE_alias("save_every", "save-every")


@flags.multi_flags_validator(["projint", "dualint"],
                             message="--dualint must be a multiple of --projint (both 0: per epoch)")
def _check_intervals(values):
    p, d = values["projint"], values["dualint"]
    return (p == 0) == (d == 0) and (p == 0 or d % p == 0)


@flags.multi_flags_validator(["quant", "prune"], message="--quant and --prune exclude each other")
def _check_modes(values):
    return not (values["quant"] and values["prune"])


@flags.validator("nnz_budget", message="--nnz_budget must be a float in (0, 1]")
def _check_nnz(value):
    return value == value and 0 < value <= 1


def _int_list(name, values):
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        _usage_error(f"Invalid value for flag `--{name}`. Received: {','.join(values)!r}. "
                     "Expected a comma list of integers.")


def _given(name):
    """A flag's value, or None when it was not given (``--from_run`` then supplies it)."""
    return FLAGS[name].value if FLAGS[name].present or not FLAGS.from_run else None


def _explicit(name):
    """A flag's value when given on the command line, else None.

    The trainer then takes its default, or what the ``--from_run`` run or the
    ``--pretrain`` model file says; an explicit value must agree with them.
    """
    return FLAGS[name].value if FLAGS[name].present else None


# On a machine without a GPU, importing TensorFlow and probing its devices writes notes from
# C++ before any Python logging exists ("Could not find cuda drivers", "failed call to cuInit:
# UNKNOWN ERROR (303)", absl's "All log messages before absl::InitializeLog()");
# TF_CPP_MIN_LOG_LEVEL does not reach all of them, and they say nothing wrong. stderr is captured
# while TensorFlow starts (before sqjl_tf, which imports it); those known lines are dropped and
# every other line is written back, so a real start-up problem still shows.
_BENIGN = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|cudart_stub\.cc.*Could not find cuda drivers"
    r"|cuda_platform\.cc.*failed call to cuInit"
    r"|cuda_executor\.cc.*(no NVIDIA GPU|kernel driver does not appear)"
    r"|cpu_feature_guard\.cc|rebuild TensorFlow with the appropriate compiler flags"
    r"|oneDNN custom operations are on"
)


def _start_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its devices with the benign start-up notes filtered out."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if line.strip() and not _BENIGN.search(line):
                    sys.stderr.write(line)


def _usage_error(message) -> NoReturn:
    """Writes ``message`` as one line on stderr and exits with status 2.

    absl's ``app.UsageError`` would print the help of every flag before it; a
    usage error is the one line saying which flag, what it received and what
    is expected.
    """
    sys.stderr.write(f"FATAL Usage error: {' '.join(str(message).split())}\n")
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        _usage_error(f"Unexpected arguments: {' '.join(argv[1:])} (flags are --name=value).")
    _start_tensorflow_quietly()  # no CPU-only start-up notes from TF's C++ on stderr
    from sqjl_tf import trainer

    try:
        trainer.run(**_run_arguments())
    except (trainer.UsageError, FileNotFoundError) as err:  # before anything is written
        _usage_error(err)
    except FloatingPointError as err:  # NonFiniteLossError: the message names epoch and batch
        logging.error("%s", err)
        sys.exit(1)


def _run_arguments() -> dict:
    """The flags' values by flat ``TrainConfig`` name: a flag of the name, or as below."""
    from sqjl_tf.config import FLAG_GROUPS

    special = {
        "mode": "evaluate" if FLAGS.evaluate else FLAGS.mode,
        "dataset": _given("dataset"),
        "arch": _explicit("arch"),
        "save_every": FLAGS["save-every"].value,
        "optim": FLAGS.optim.lower(),
        "weightbits": _int_list("weightbits", FLAGS.weightbits),
        "prune_to": _int_list("prune_to", FLAGS.prune_to),
        "export": tuple(FLAGS.export),
    }
    assert all(n in special or n in FLAGS for n in FLAG_GROUPS), "a TrainConfig field has no flag"
    return {n: special[n] if n in special else FLAGS[n].value for n in FLAG_GROUPS}


def _parse_flags(argv):
    """absl's parser, but a bad flag exits with status 2 (a usage error)."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        sys.stderr.write(f"FATAL Flags parsing error: {' '.join(str(err).split())} (pass "
                         "--helpshort or --helpfull to see help on flags)\n")
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
