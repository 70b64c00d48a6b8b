"""Fashion-MNIST ResNet-20 at ~80x and ~270x: ``sqjl_tf.compress`` against TFMOT, one command.

1. pretrains the dense ``resnet20`` (28x28x1 input) on Fashion-MNIST once (or reuses
   ``--dense``), and writes its weights as an npz keyed ``<layer>.<i>`` with its logits
   on the first test images, for the legacy-Keras TFMOT process;
2. compresses it with ``sqjl_tf.compress`` at each budget, ``--epochs`` in all;
3. runs the TFMOT pipeline from the same weights at the same budgets and epochs
   (``tfmot_resnet20.py``, own process): ``uniform`` (TFMOT's default, one sparsity
   and 2**bits clusters for every kernel) and ``practitioner`` (first conv and
   classifier dense at 8 bits, the rest sharing what is left of the budget); each
   checks first that the transferred tf_keras model gives the Keras 3 logits;
4. measures every final model from its weights alone in this process (per-layer
   nonzeros, distinct nonzero values, bits = ceil(log2(distinct)), the paper's rate
   ``32 * sum(n) / sum(bits * nnz)``, and the real bit-packed file's rate from
   ``sqjl_tf.file_size_breakdown``), its test accuracy and wall time;
5. writes ``fashion_mnist_resnet20.md`` (with sqjl_tf's learned per-layer
   allocation), ``.json`` and ``.png`` to ``--out_dir``.

Every finished stage and run is kept in ``<out_dir>/fashion_mnist_resnet20_runs``; the
same command run again reuses them (an interrupted pretraining resumes from its last
epoch, ``compress`` keeps its finished stages), so an interrupted benchmark resumes.
``--jobs`` TFMOT processes run beside sqjl_tf's runs. Budgets or variants may be added by
later calls into the same ``--out_dir``; other epochs, seed, limit or dense model need
another ``--out_dir``. A run holds the work folder's ``.lock``: a second benchmark started
in the same ``--out_dir`` meanwhile is refused before it writes anything.

Usage (full run; many hours on 2 CPU cores):
    python experiments/fashion_mnist_resnet20/benchmark.py --jobs=1
Smoke run:
    python experiments/fashion_mnist_resnet20/benchmark.py --limit=256 --pretrain_epochs=1 \
        --epochs=3 --out_dir=/tmp/r20
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.path.append(os.path.join(ROOT, "experiments", "fashion_mnist"))  # after HERE: allocation.py is ours

from peer_jobs import finished_ok  # noqa: E402  (the LeNet benchmark's folder)

from allocation import KERNEL_SIZES, VARIANTS, allocation, epoch_split  # noqa: E402
from cli import NAME, parse_flags, usage_error  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's "
                    "dataset-fashion-mnist in /usr/share/datasets/fashion-mnist).")
flags.DEFINE_string("dense", None, "A trained dense resnet20 .keras (28x28x1, 10 classes); "
                    "pretrained here if absent.")
flags.DEFINE_integer("pretrain_epochs", 20, "Epochs of dense pretraining (SGD 0.1, cosine).",
                     lower_bound=1)
flags.DEFINE_integer("epochs", 20, "Epochs of every compression run (sqjl_tf: all of "
                     "compress()'s stages; TFMOT: pruning + clustering).", lower_bound=3)
flags.DEFINE_list("budgets", ["0.1:4", "0.04:3"], "nnz_budget:bit_budget pairs (~80x, ~270x).")
flags.DEFINE_list("variants", list(VARIANTS), f"TFMOT variants, of {', '.join(VARIANTS)}.")
flags.DEFINE_bool("tfmot", True, "Also run the TFMOT pipelines (needs the [tfmot] extra).")
flags.DEFINE_integer("batch_size", 128, "Batch size of every training.", lower_bound=1)
flags.DEFINE_integer("limit", None, "Use only the first N examples of each split (smoke runs).",
                     lower_bound=1)
flags.DEFINE_integer("jobs", 1, "TFMOT processes (about one core each) beside sqjl_tf's runs; "
                     "0 runs everything one after the other.", lower_bound=0)
flags.DEFINE_integer("check_images", 500, "Test images on which the tf_keras copy of the dense "
                     "model must give the Keras 3 logits.", lower_bound=1)
flags.DEFINE_string("out_dir", os.path.join(ROOT, "experiments", "results"), "Where results go.")
flags.DEFINE_integer("seed", 1, "Random seed.")

TAG = r"[A-Za-z0-9_-]+"  # a variant run's name: recipe_variant --tag, split_variant --from_tag
DEBIAN_DATA = "/usr/share/datasets/fashion-mnist"
# What every row depends on: runs in one work folder must share these.
_SHARED = ("pretrain_epochs", "dense", "epochs", "batch_size", "limit", "seed", "data_dir")


# ---------------------------------------------------------------- flags, before any work
def _usage(flag, value, expected):
    return app.UsageError(f"Invalid value for flag `--{flag}`. Received: {value!r}. "
                          f"Expected {expected}.")


def parse_budgets(specs):
    """``[(nnz, bits), ...]`` of ``--budgets``; raises app.UsageError if one is bad."""
    budgets = []
    for spec in specs:
        try:
            nnz, bits = spec.split(":")
            nnz, bits = float(nnz), int(bits)
        except ValueError:
            nnz = bits = None
        if nnz is None or not (0 < nnz <= 1 and 1 <= bits <= 8):
            raise _usage("budgets", spec, "nnz_budget:bit_budget pairs with nnz_budget in (0, 1] "
                         "and an integer bit_budget in [1, 8], such as 0.04:3")
        budgets.append((nnz, bits))
    if not budgets or len(set(budgets)) != len(budgets):
        raise _usage("budgets", ",".join(specs), "one or more distinct pairs")
    return budgets


def one_budget(spec):
    """``(nnz, bits)`` of the variant scripts' ``--budget``; exits with a usage error if bad."""
    try:
        (nnz, bits), = parse_budgets([spec])
    except app.UsageError as err:
        usage_error(str(err).replace("`--budgets`", "`--budget`"))
    return nnz, bits


def check_variants(variants):
    """Raises app.UsageError unless ``variants`` are one or more TFMOT variants."""
    if not variants or any(v not in VARIANTS for v in variants):
        raise _usage("variants", ",".join(variants), f"one or more of {', '.join(VARIANTS)}")


def _check_flags():
    """Every flag's value and combination; returns the budgets. Raises app.UsageError."""
    budgets = parse_budgets(FLAGS.budgets)
    check_variants(FLAGS.variants)
    for nnz, bits in budgets if FLAGS.tfmot else ():
        for variant in FLAGS.variants:
            try:
                allocation(variant, nnz, bits)
            except ValueError as err:
                raise _usage("budgets", f"{nnz}:{bits}", f"a budget the TFMOT {variant} variant "
                             f"can hold ({err})") from None
    if FLAGS.dense and not os.path.isfile(FLAGS.dense):
        raise _usage("dense", FLAGS.dense, "an existing .keras file (or none: pretrained here)")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise _usage("data_dir", FLAGS.data_dir, "an existing folder with the Fashion-MNIST IDX "
                     "files")
    if not FLAGS.data_dir and not glob.glob(os.path.join(DEBIAN_DATA, "train-images-idx3-ubyte*")):
        raise _usage("data_dir", None, f"a Fashion-MNIST folder: none in {DEBIAN_DATA} (apt-get "
                     "install dataset-fashion-mnist)")
    if FLAGS.tfmot and any(importlib.util.find_spec(m) is None
                           for m in ("tensorflow_model_optimization", "tf_keras")):
        raise _usage("tfmot", True, "False (--notfmot): tensorflow_model_optimization or "
                     "tf_keras is not installed (pip install -e '.[tfmot]')")
    return budgets


def _settings():
    values = {key: getattr(FLAGS, key) for key in _SHARED}
    if values["dense"]:
        values["dense"], values["pretrain_epochs"] = os.path.abspath(values["dense"]), None
    return values


def _hold(work, held: contextlib.ExitStack):
    """Holds the work folder's ``.lock`` in ``held``: another benchmark writing there
    would run, and write, the same runs again."""
    from sqjl_tf import rundir

    try:
        held.enter_context(rundir.RunDir(work, "out_dir", received=FLAGS.out_dir).locked())
    except rundir.UsageError as err:
        raise app.UsageError(str(err)) from None


def claim(work, write: bool = True):
    """The work folder's settings: written by its first run (``write=False``: only checked),
    the same for every later one."""
    path = os.path.join(work, "settings.json")
    settings = _settings()
    if os.path.isfile(path):
        with open(path) as f:
            found = json.load(f)
        if found != settings:
            changed = {k: (found.get(k), v) for k, v in settings.items() if found.get(k) != v}
            raise app.UsageError(f"Invalid value for flag `--out_dir`. Received: "
                                 f"{FLAGS.out_dir!r}, whose runs have other settings (was, now: "
                                 f"{changed}). Expected another --out_dir (nothing was changed).")
        return
    if not write:
        return
    os.makedirs(work, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(settings, f, indent=1)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- the dense model
def split_data(split, batch_size, limit=None):
    """The batched Fashion-MNIST ``split`` (train shuffled by ``--seed``), as every run reads it."""
    import sqjl_tf

    seed = FLAGS.seed if split == "train" else None
    return sqjl_tf.load_dataset("fashion_mnist", FLAGS.data_dir, batch_size, split, seed=seed,
                                limit=limit or FLAGS.limit)[0]


def loss_fn():
    """The loss of every training here (the ResNet-20 gives logits)."""
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


_BENCH = {}  # the one Keras 3 ResNet-20 every final model is loaded into and measured on


def _bench():
    """``_BENCH``, its model and test set made on first use."""
    import sqjl_tf

    if "model" not in _BENCH:
        model = sqjl_tf.build_model("resnet20", num_classes=10, input_shape=(28, 28, 1))
        model.compile(loss=loss_fn(), metrics=["accuracy"])
        _BENCH["model"] = model
        _BENCH["test"] = split_data("test", 500)
    return _BENCH


def bench_test_set():
    """The test set every row is measured on (batches of 500, in file order)."""
    return _bench()["test"]


def bench_model(weights):
    """The measuring ResNet-20 holding ``weights`` ({``<layer>.<i>``: array}).

    One model, compiled once: every row's evaluation reuses its traced function.
    """
    model = _bench()["model"]
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([weights[f"{layer.name}.{i}"] for i in range(len(layer.weights))])
    return model


def pretrain(work):
    """(path, test accuracy) of the dense model: ``--dense``, finished here, or trained now."""
    from sqjl_tf import trainer

    if FLAGS.dense:
        return FLAGS.dense, None
    logdir = os.path.join(work, "dense")
    final = os.path.join(logdir, "final.json")
    if os.path.isfile(final):
        with open(final) as f:
            record = json.load(f)
        if os.path.isfile(record.get("files", {}).get("keras", "")):
            logging.info("dense: reusing the finished pretraining in %s", logdir)
            return record["files"]["keras"], record["test_accuracy"]
    record = trainer.run(mode="pretrain", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                         arch="resnet20", epochs=FLAGS.pretrain_epochs, lr=0.1, lr_sched="cos",
                         momentum=0.9, weight_decay=5e-4, batch_size=FLAGS.batch_size,
                         seed=FLAGS.seed, limit=FLAGS.limit, workers=2, export=("keras",),
                         logdir=logdir)
    return record["files"]["keras"], record["test_accuracy"]


def load_dense(path):
    """The dense Keras 3 model, checked to be this benchmark's ResNet-20."""
    import keras

    from sqjl_tf import compressible_kernels

    model = keras.models.load_model(path, compile=False)
    found = {k.name.split("/")[0]: k.size for k in compressible_kernels(model)}
    if (tuple(model.input_shape) != (None, 28, 28, 1) or model.output_shape[-1] != 10
            or list(found.items()) != list(KERNEL_SIZES.items())):
        raise _usage("dense", path, "sqjl_tf's resnet20 for 28x28x1 inputs and 10 classes "
                     f"(kernels {list(KERNEL_SIZES.items())[:3]}...), not input "
                     f"{model.input_shape}, kernels {list(found.items())[:3]}...")
    return model


def layer_weights(model):
    """``model``'s weights as ``{<layer>.<i>: array}``, the form every row's model is kept in."""
    return {f"{layer.name}.{i}": w for layer in model.layers
            for i, w in enumerate(layer.get_weights())}


def _transfer_files(model, work):
    """The dense weights (npz) and logits on the first test images (npy) for TFMOT."""
    import numpy as np

    count = min(FLAGS.check_images, FLAGS.limit or FLAGS.check_images)
    npz = os.path.join(work, "dense_weights.npz")
    logits = os.path.join(work, f"dense_logits_{count}.npy")
    if not (os.path.isfile(npz) and os.path.isfile(logits)):
        np.savez(npz + ".tmp.npz", **layer_weights(model))
        x = next(iter(split_data("test", count, limit=count)))[0]
        np.save(logits + ".tmp.npy", model.predict(x, verbose=0))
        os.replace(npz + ".tmp.npz", npz)
        os.replace(logits + ".tmp.npy", logits)
    return npz, logits


# ---------------------------------------------------------------- measurement
def _accuracy(model):
    """Test accuracy of ``model`` (the measuring ResNet-20, holding a row's weights)."""
    return float(model.evaluate(bench_test_set(), verbose=0, return_dict=True)["accuracy"])


def measure(weights, nnz, bits):
    """A row's measured part, from the final weights alone: kernels, file, accuracy."""
    import sqjl_tf

    model = bench_model(weights)
    sizes = [k.size for k in sqjl_tf.compressible_kernels(model)]
    report = sqjl_tf.compression_report(model, budget_bits=sqjl_tf.budget_bits(sizes, nnz, bits))
    try:
        breakdown = sqjl_tf.file_size_breakdown(model)
        file_rate, file_bytes = breakdown.real_rate, breakdown.total_bytes
    except ValueError as err:  # a kernel with more than 256 levels: no such file
        logging.warning("no compressed file: %s", err)
        file_rate = file_bytes = None
    return {
        "nnz_budget": nnz, "bit_budget": bits,
        "accuracy": _accuracy(model),
        "rate": report.compression_rate, "file_rate": file_rate, "file_bytes": file_bytes,
        "size_bits": report.size_bits, "budget_bits": report.budget_bits,
        "within_budget": bool(report.within_budget),
        "empty_layers": [s.name.split("/")[0] for s in report.layers if s.nnz == 0],
        "layers": [{"name": s.name.split("/")[0], "size": s.size, "nnz": s.nnz,
                    "distinct": s.distinct, "bits": s.bits, "density": s.density}
                   for s in report.layers],
    }


def save_row(path, row):
    """Writes a finished run's row to ``path`` atomically."""
    from sqjl_tf._files import write_json

    write_json(path, row)


def load_row(path):
    """The row at ``path``, None if there is none (a run not finished)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------- sqjl_tf
def _stage_clock(path):
    """A callback adding each finished ``fit``'s seconds to ``path`` by stage (ADMM, fine-tuning).

    ``compress`` skips the stages its workdir holds, so their time is read back from
    there: the row's time is that of the stages that made the model. The ADMM stage is
    the fit whose optimizer carries an ADMM state: the fine-tuning's optimizer is an
    ``ADMMOptimizer`` too when it trains the centres, but without one.
    """
    import keras

    class StageClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.time()

        def on_train_end(self, logs=None):
            admm = getattr(self.model.optimizer, "admm", None)
            stage = "finetune" if admm is None else "admm"
            seconds = load_row(path) or {}
            seconds[stage] = time.time() - self.start
            save_row(path, seconds)

    return StageClock()


def run_sqjl(dense_path, nnz, bits, work, recipe=None, tag=""):
    """sqjl_tf.compress at one budget (its finished row, or run now; stages resumed).

    ``recipe``: a ``sqjl_tf.Recipe`` (default: compress's own), its run kept in
    ``sqjl_<nnz>_<bits><tag>``.
    """
    import sqjl_tf

    workdir = os.path.join(work, f"sqjl_{nnz}_{bits}{tag}")
    row = finished_sqjl_row(workdir, recipe)
    if row is not None:
        logging.info("sqjl_tf %s/%s: reusing the finished run in %s", nnz, bits, workdir)
        return row
    model = load_dense(dense_path)
    clock = os.path.join(workdir, "stage_seconds.json")
    result = sqjl_tf.compress(model, split_data("train", FLAGS.batch_size), split_data("test", 500),
                              nnz_budget=nnz, bit_budget=bits, epochs=FLAGS.epochs, loss=loss_fn(),
                              dense_epochs=0, seed=FLAGS.seed, workdir=workdir, recipe=recipe,
                              callbacks=[_stage_clock(clock)], verbose=2)
    result.model.save(os.path.join(workdir, "model_compressed.keras"))
    split = result.epochs
    row = {"method": "sqjl_tf", "variant": f"compress: ADMM {split['admm']} + float "
           f"{split['float']} + quantized {split['quant']}"
           + (f", {_recipe_changes(recipe)}" if recipe else ""),
           **measure(layer_weights(result.model), nnz, bits),
           "learned": {"layers": [n.split("/")[0] for n in result.layers], "bits": result.bits,
                       "nnz": result.nnz},
           "recipe": _recipe_settings(recipe),
           "epochs": FLAGS.epochs, "seconds": sum((load_row(clock) or {}).values())}
    save_row(workdir + ".row.json", row)
    return row


def _recipe_settings(recipe=None) -> dict:
    """Every setting of ``recipe`` (None: compress's own), as a finished row records them."""
    import dataclasses

    import sqjl_tf

    return dataclasses.asdict(recipe or sqjl_tf.Recipe())


def finished_sqjl_row(workdir, recipe=None):
    """The finished row of ``workdir``, None if there is none.

    Raises:
        app.UsageError: if the row was made with other recipe settings than
            ``recipe``'s (e.g. before compress's defaults changed): reusing it
            would put another run's figures under this one's name.
    """
    row = load_row(workdir + ".row.json")
    if row is None:
        return None
    expected, found = _recipe_settings(recipe), row.get("recipe")
    if found != expected:
        differs = (sorted(k for k in {**expected, **found} if found.get(k) != expected.get(k))
                   if found else ["(the row records none)"])  # a setting added or gone counts
        raise app.UsageError(
            f"Invalid value for flag `--out_dir`. Received: {FLAGS.out_dir!r}, whose finished run "
            f"{workdir} was made with other recipe settings ({', '.join(differs)}). Expected a "
            "folder whose runs match this recipe: move that run (and its .row.json) away, or "
            "give another --out_dir.")
    return row


def _recipe_changes(recipe):
    """The settings in which ``recipe`` differs from compress()'s own, as ``k=v, ...``."""
    import dataclasses

    import sqjl_tf

    default = sqjl_tf.Recipe()

    def shown(value):  # numbers as 4 significant digits; names and flags as they are
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{f.name}={shown(getattr(recipe, f.name))}"
                     for f in dataclasses.fields(recipe)
                     if getattr(recipe, f.name) != getattr(default, f.name)) or "default recipe"


# ---------------------------------------------------------------- TFMOT
class _TfmotRun:
    """One TFMOT pipeline in its own legacy-Keras process, then measured here."""

    def __init__(self, npz, logits, nnz, bits, variant, work):
        self.nnz, self.bits, self.variant = nnz, bits, variant
        self.prune, self.cluster = epoch_split(FLAGS.epochs)
        stem = os.path.join(work, f"tfmot_{variant}_{nnz}_{bits}")
        self.out, self.weights, self.row_file = stem + ".json", stem + ".npz", stem + ".row.json"
        self.cmd = [sys.executable, os.path.join(HERE, "tfmot_resnet20.py"), f"--weights={npz}",
                    f"--expect_logits={logits}", f"--nnz_budget={nnz}", f"--bit_budget={bits}",
                    f"--variant={variant}", f"--epochs_prune={self.prune}",
                    f"--epochs_cluster={self.cluster}", f"--batch_size={FLAGS.batch_size}",
                    f"--seed={FLAGS.seed}", f"--out={self.out}", f"--weights_out={self.weights}"]
        self.cmd += [f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []
        self.cmd += [f"--limit={FLAGS.limit}"] if FLAGS.limit else []
        self.proc = self.log = None

    def finished(self) -> bool:
        return os.path.isfile(self.row_file) or (os.path.isfile(self.out)
                                                 and os.path.isfile(self.weights))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        logging.info("TFMOT %s %s/%s: %s", self.variant, self.nnz, self.bits, " ".join(self.cmd))
        self.log = open(self.out[: -len(".json")] + ".log", "w")  # a pipe could fill and block
        self.proc = subprocess.Popen(self.cmd, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"),
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def row(self):
        """Waits for the process (started now if need be); the measured row, None on failure."""
        row = load_row(self.row_file)
        if row is not None:
            logging.info("TFMOT %s %s/%s: reusing the finished run", self.variant, self.nnz,
                         self.bits)
            return row
        if self.proc is None and not self.finished():
            self.start()
        if self.proc is not None:
            if not finished_ok(self.proc, self.log, f"{self.variant} {self.nnz}/{self.bits}"):
                return None
        return self._measured()

    def _measured(self):
        import numpy as np

        with open(self.out) as f:
            result = json.load(f)
        with np.load(self.weights, allow_pickle=False) as z:
            weights = dict(z)
        row = {"method": "TFMOT", "variant": self.variant, **measure(weights, self.nnz, self.bits),
               "accuracy_tf_keras": result["accuracy"],
               "transfer_check": result.get("transfer_check"),
               "epochs": self.prune + self.cluster,
               "epoch_split": {"prune": self.prune, "cluster": self.cluster},
               "seconds": result["seconds"], "notes": result.get("notes", [])}
        save_row(self.row_file, row)
        return row


def _take_finished(runs, rows, lock):
    """Adds to ``rows`` the TFMOT runs finished by now (measured here), not yet in it."""
    for run in runs:
        key = (run.nnz, run.bits, run.variant)
        with lock:
            done = key not in rows and not run.running() and run.finished()
        if done:
            rows[key] = run.row()


def _launcher(waiting, runs, lock):
    """Keeps up to --jobs TFMOT processes running beside sqjl_tf, in table order."""
    while True:
        with lock:
            while waiting and sum(r.running() for r in runs) < FLAGS.jobs:
                waiting.pop(0).start()
            if not waiting:
                return
        time.sleep(2)


# ---------------------------------------------------------------- output
def _ordered(rows, budgets):
    table = []
    for nnz, bits in budgets:
        for key in ["sqjl"] + list(FLAGS.variants):
            if rows.get((nnz, bits, key)) is not None:
                table.append(rows[(nnz, bits, key)])
    return table


def _label(row):
    return "sqjl_tf compress" if row["method"] == "sqjl_tf" else f"TFMOT {row['variant']}"


def _allocation_lines(rows):
    """sqjl_tf's learned allocation: bits and nonzeros of every kernel, at each budget."""
    ours = [r for r in rows if r["method"] == "sqjl_tf"]
    if not ours:
        return []
    head = " | ".join(f"{r['nnz_budget']}, {r['bit_budget']} b" for r in ours)
    lines = ["", "## sqjl_tf's learned allocation", "",
             "Bits / nonzeros (density) of each kernel of the final models, measured from the "
             "weights.", "", f"| layer | weights | {head} |",
             "| --- | ---: |" + " ---: |" * len(ours)]
    for i, name in enumerate(KERNEL_SIZES):
        cells = []
        for r in ours:
            layer = r["layers"][i]
            cells.append(f"{layer['bits']} b / {layer['nnz']} ({layer['density']:.2%})")
        lines.append(f"| {name} | {KERNEL_SIZES[name]} | " + " | ".join(cells) + " |")
    totals = [f"{sum(layer['nnz'] for layer in r['layers'])} nnz, {r['size_bits']} bits"
              for r in ours]
    lines.append(f"| total | {sum(KERNEL_SIZES.values())} | " + " | ".join(totals) + " |")
    return lines


def _write(rows, dense_acc, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    prune, cluster = epoch_split(FLAGS.epochs)
    lines = [
        "# Fashion-MNIST, ResNet-20: sqjl_tf.compress against TFMOT", "",
        f"Dense ResNet-20 (28x28x1): test accuracy {dense_acc:.4f}. Every method starts from it "
        f"and trains {FLAGS.epochs} epochs (TFMOT: {prune} pruning + {cluster} clustering)."
        " Every model is measured from its weights alone: bits = "
        "ceil(log2(distinct nonzero values)), paper rate = 32 x 270,608 / sum(bits x nnz) over "
        "the 22 kernels; file rate = all float32 weights (BatchNorm and biases included) / the "
        "bit-packed file of `sqjl_tf.save_compressed`. Wall times overlap when TFMOT ran beside "
        "sqjl_tf (`--jobs`)."
        + (f" Reduced run: only the first {FLAGS.limit:,} images of each split (`--limit`)."
           if FLAGS.limit else ""), "",
        "| method | budget (nnz, bits) | accuracy | paper rate | file rate | within budget | "
        "empty layers | epochs | wall time (min) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        file_rate = f"{r['file_rate']:.1f}x" if r.get("file_rate") else "n/a"
        lines.append(
            f"| {_label(r)} | {r['nnz_budget']}, {r['bit_budget']} | {r['accuracy']:.4f} | "
            f"{r['rate']:.1f}x | {file_rate} | {'yes' if r['within_budget'] else 'NO'} | "
            f"{len(r['empty_layers'])} | {r['epochs']} | {r['seconds'] / 60:.1f} |")
    lines += _allocation_lines(rows)
    with open(os.path.join(out_dir, f"{NAME}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, f"{NAME}.json"), "w") as f:
        json.dump({"dense_accuracy": dense_acc, "settings": _settings(), "rows": rows}, f,
                  indent=1)
    _plot(rows, dense_acc, out_dir)


def _plot(rows, dense_acc, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed: no plot (pip install -e '.[plot]').")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted({_label(r) for r in rows})
    for label, marker, colour in zip(labels, itertools.cycle("osd^v"),
                                     itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()
                                                     ["color"])):
        pts = sorted((r["rate"], r["accuracy"], r.get("file_rate")) for r in rows
                     if _label(r) == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour,
                label=f"{label} (paper rate)")
        files = [p for p in pts if p[2]]
        ax.plot([p[2] for p in files], [p[1] for p in files], marker=marker, color=colour,
                linestyle=":", markerfacecolor="none", label=f"{label} (file rate)")
    ax.axhline(dense_acc, color="gray", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(
        [m * 10 ** e for e in range(4) for m in (1, 2, 3, 5)]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("compression rate (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Fashion-MNIST ResNet-20")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15))
    fig.savefig(os.path.join(out_dir, f"{NAME}.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- main
def main(argv):
    if len(argv) > 1:
        usage_error(f"Unexpected arguments: {' '.join(argv[1:])} (flags are --name=value).")
    work = os.path.join(FLAGS.out_dir, f"{NAME}_runs")
    with contextlib.ExitStack() as held:
        try:  # usage errors before any work
            budgets = _check_flags()
            if FLAGS.dense:
                load_dense(FLAGS.dense)
            claim(work, write=False)  # before TF's start-up notes: one line on stderr
            _hold(work, held)
            claim(work)
            for nnz, bits in budgets:  # a finished run of another recipe: refused before training
                finished_sqjl_row(os.path.join(work, f"sqjl_{nnz}_{bits}"))
        except app.UsageError as err:
            usage_error(err)
        _run(budgets, work)


def _run(budgets, work):
    """Pretraining, then every run (reused when finished), the table after each."""
    from sqjl_tf import trainer

    try:
        dense_path, dense_acc = pretrain(work)
    except trainer.UsageError as err:  # raised before the trainer writes anything
        usage_error(err)
    dense = load_dense(dense_path)
    if dense_acc is None or math.isnan(dense_acc):
        dense_acc = _accuracy(bench_model(layer_weights(dense)))
    logging.info("dense resnet20: test accuracy %.4f", dense_acc)
    npz, logits = _transfer_files(dense, work)
    runs = [_TfmotRun(npz, logits, nnz, bits, variant, work)
            for nnz, bits in budgets for variant in (FLAGS.variants if FLAGS.tfmot else ())]
    waiting, lock = [run for run in runs if not run.finished()], threading.Lock()
    if FLAGS.jobs and waiting:
        threading.Thread(target=_launcher, args=(waiting, runs, lock), daemon=True).start()
    rows = {}
    for nnz, bits in budgets:
        rows[(nnz, bits, "sqjl")] = run_sqjl(dense_path, nnz, bits, work)
        _take_finished(runs, rows, lock)  # TFMOT runs done beside it go in the table now
        _write(_ordered(rows, budgets), dense_acc, FLAGS.out_dir)
        if not FLAGS.jobs:  # one after the other, as the table reads
            for run in [r for r in runs if (r.nnz, r.bits) == (nnz, bits)]:
                rows[(nnz, bits, run.variant)] = run.row()
                _write(_ordered(rows, budgets), dense_acc, FLAGS.out_dir)
    for run in [r for r in runs if (r.nnz, r.bits, r.variant) not in rows]:
        while True:  # started by the launcher (or finished before), in order
            with lock:
                if run not in waiting:
                    break
            time.sleep(2)
        rows[(run.nnz, run.bits, run.variant)] = run.row()
        _write(_ordered(rows, budgets), dense_acc, FLAGS.out_dir)
    logging.info("wrote %s", os.path.join(FLAGS.out_dir, f"{NAME}.md"))
    failed = [f"{run.variant} {run.nnz}/{run.bits}" for run in runs
              if rows.get((run.nnz, run.bits, run.variant)) is None]
    if failed:
        logging.error("TFMOT runs failed (their logs are in %s): %s", work, ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
