"""Fashion-MNIST LeNet-5 across budgets: sqjl_tf against the TFMOT pipeline, one command.

1. pretrains the dense ``caffelenet`` on the full Fashion-MNIST (or reuses ``--dense``);
2. compresses it with sqjl_tf at each budget (``--admm_epochs`` of ADMM, then
   ``--ft_epochs`` of fine-tuning), from the same weights;
3. runs the TFMOT pipeline (uniform sparsity, and the hand-tuned variant) at the
   same budgets and the same total epochs, each in its own legacy-Keras process;
4. measures every final model from its weights alone (nnz, distinct values -> bits,
   rate), its test accuracy and wall time;
5. writes ``experiments/results/fashion_mnist.md`` and ``fashion_mnist.png``.

The TFMOT runs go in their own processes (about one core each), ``--jobs`` of them
beside sqjl_tf's runs. Every finished run is kept in the work folder
(``<out_dir>/fashion_mnist_runs``), and the same command run again reuses it: an
interrupted benchmark resumes where it stopped. Budgets or variants run by separate
invocations into one ``--out_dir`` share a table with ``--table_only``; sqjl_tf
runs with other settings (say ``--admm_epochs=14 --ft_epochs=18``) go beside the
others under ``--tag`` and the table shows each as its own row. ``--ft_start``
chooses what the fine-tuning starts from: the finalised ADMM model, the ADMM
weights pruned to the budget's support in full precision (``sparse``), or ADMM's
trained weights unpruned, pruned gradually to ADMM's allocation over
``--ft_prune_epochs`` (``trained``). Fashion-MNIST is Debian's
``dataset-fashion-mnist``, installed if missing (or give ``--data_dir``).

Usage (full run; hours on 2 CPU cores):
    python experiments/fashion_mnist/benchmark.py
Smoke run:
    python experiments/fashion_mnist/benchmark.py --limit=512 --pretrain_epochs=1 \
        --admm_epochs=1 --ft_epochs=0 --tfmot_prune_epochs=1 --tfmot_cluster_epochs=0 \
        --out_dir=/tmp/fm_smoke
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from peer_jobs import finished_ok  # noqa: E402  (this script's folder)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's location).")
flags.DEFINE_string("dense", None, "A trained dense caffelenet .keras; pretrained here if absent.")
flags.DEFINE_integer("pretrain_epochs", 10, "Epochs of dense pretraining.", lower_bound=1)
flags.DEFINE_list("budgets", ["0.0054:3", "0.02:3", "0.08:4"], "nnz_budget:bit_budget pairs.")
flags.DEFINE_integer("admm_epochs", 30, "Epochs of ADMM compression.", lower_bound=1)
flags.DEFINE_integer("ft_epochs", 2, "Epochs of fine-tuning after ADMM.", lower_bound=0)
flags.DEFINE_float("lr", 0.03, "ADMM learning rate (cosine).")
flags.DEFINE_float("ft_lr", None, "Fine-tuning learning rate (cosine; default lr / 10).")
flags.DEFINE_integer("ft_float_epochs", 0, "Fine-tuning epochs in full precision on the frozen support "
                     "before quantizing (of --ft_epochs).", lower_bound=0)
flags.DEFINE_bool("ft_keep_support", False, "Fine-tune with codebooks of nonzero centres only (no "
                  "kept weight rounds to zero), as TFMOT's sparsity-preserving clustering.")
flags.DEFINE_enum("ft_optim", "sgd", ["sgd", "adam"], "Fine-tuning optimizer (sgd: momentum 0.9).")
flags.DEFINE_enum("ft_start", "finalised", ["finalised", "sparse", "trained"],
                  "What fine-tuning starts from: the ADMM model finalised (pruned and quantized); "
                  "only pruned to the budget's support, in full precision, with ADMM's widths "
                  "(sparse); or ADMM's trained weights unpruned, pruned gradually to ADMM's "
                  "allocation over --ft_prune_epochs (trained).")
flags.DEFINE_integer("ft_prune_epochs", 0, "With --ft_start=trained: fine-tuning epochs over which "
                     "the support shrinks to ADMM's allocation (of --ft_float_epochs).",
                     lower_bound=0)
flags.DEFINE_bool("ft_train_centres", False, "Train the centres by gradient in the quantized "
                  "fine-tuning epochs (TFMOT's clustering) instead of Lloyd re-fits.")
flags.DEFINE_float("ft_kdtemp", 0.0, "Fine-tuning distillation temperature, the dense model the "
                   "teacher (0: off).", lower_bound=0)
flags.register_validator("ft_lr", lambda v: v is None or v > 0,
                         message="--ft_lr must be a float > 0 (or unset: lr / 10).")
flags.DEFINE_float("rho", 0.05, "ADMM rho (at the start).")
flags.DEFINE_float("rho_growth", 1.0, "Factor on rho at each epoch end (1: constant, the reference).",
                   lower_bound=1)
flags.DEFINE_integer("projint", 20, "Batches between sparse projections.", lower_bound=0)
flags.DEFINE_integer("dualint", 240, "Batches between dual updates: about one epoch at batch 256, "
                     "as the reference; a multiple of projint.", lower_bound=0)
flags.DEFINE_enum("importance", "magnitude", ["magnitude", "fisher"],
                  "sqjl_tf's sparse-projection importance (see run.py --importance).")
flags.DEFINE_integer("batch_size", 256, "Batch size.", lower_bound=1)
flags.DEFINE_string("tag", "", "Suffix of this call's sqjl_tf run folders (sqjl_<nnz>_<bits>_<tag>), so that "
                    "runs with other settings (e.g. another ADMM/fine-tuning split) share the work "
                    "folder; the table shows every finished sqjl_tf run of its budgets.")
flags.register_validator("tag", lambda v: re.fullmatch(r"[A-Za-z0-9.-]*", v) is not None,
                         message="--tag must be letters, digits, '.' or '-' (or empty).")
flags.DEFINE_bool("tfmot", True, "Also run the TFMOT pipelines (needs the [tfmot] extra).")
flags.DEFINE_list("tfmot_variants", ["uniform", "hand"], "TFMOT variants.")
flags.DEFINE_integer("tfmot_prune_epochs", None, "TFMOT pruning epochs (default: 2/3 of ADMM's total).")
flags.DEFINE_integer("tfmot_cluster_epochs", None, "TFMOT clustering epochs (default: the rest).")
flags.DEFINE_integer("limit", None, "Use only N examples per split (smoke runs).", lower_bound=1)
flags.DEFINE_integer("jobs", 1, "TFMOT runs (own processes, about one core each) allowed beside "
                     "sqjl_tf's runs; 0 runs everything one after the other.", lower_bound=0)
flags.DEFINE_bool("table_only", False, "Write the table and plot from the runs already finished in "
                  "--out_dir (those with these settings); train nothing. Lets runs made by "
                  "several invocations (other --budgets or --tfmot_variants) share one table.")
flags.DEFINE_string("out_dir", os.path.join(ROOT, "experiments", "results"), "Where results go.")
flags.DEFINE_integer("seed", 1, "Random seed.")


_DENSE_KEYS = ("epochs", "lr", "lr_sched", "momentum", "weight_decay", "batch_size", "seed",
               "limit")


def _pretrain(work):
    """The dense model's path and its run's record (None for --dense); trained if not done."""
    if FLAGS.dense:
        return FLAGS.dense, None
    args = dict(mode="pretrain", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                arch="caffelenet", epochs=FLAGS.pretrain_epochs, lr=0.01, lr_sched="cos",
                momentum=0.9, weight_decay=5e-4, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                limit=FLAGS.limit, export=("keras",), logdir=os.path.join(work, "dense"))
    record = _finished_run(args, _DENSE_KEYS)
    if record is not None:
        logging.info("dense: reusing the finished run in %s", args["logdir"])
        return record["files"]["keras"], record
    if FLAGS.table_only:
        path = os.path.join(work, "dense", "model_dense.keras")
        if not os.path.isfile(path):
            raise app.UsageError(
                f"Invalid value for flag `--dense`. Received: None with --table_only. Expected "
                f"the dense model's path (none found at {path}).")
        return path, None
    from sqjl_tf import trainer

    record = trainer.run(**args)
    return record["files"]["keras"], record


def _dense_npz(dense_path, work):
    import keras
    import numpy as np

    model = keras.models.load_model(dense_path, compile=False)
    path = os.path.join(work, "dense_weights.npz")
    np.savez(path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    return path


# What rows written before a setting existed used. ``ft_refresh``: the fine-tuning's
# epoch-end codebook refresh, a k-means restart before, Lloyd from the running
# codebook now (sqjl_tf.finetune); not a flag, but it changes the result.
_SETTINGS_ADDED_LATER = {"rho_growth": 1.0, "ft_refresh": "restart", "ft_lr": "lr / 10",
                         "ft_float_epochs": 0, "ft_optim": "sgd", "ft_keep_support": False,
                         "ft_start": "finalised", "ft_kdtemp": 0.0, "ft_train_centres": False,
                         "ft_prune_epochs": 0}
_FT_REFRESH = "warm"
# The trainer arguments a finished ADMM stage is matched on (config.json), with
# the defaults of those a config written before them lacks.
_ADMM_KEYS = ("epochs", "nnz_budget", "bit_budget", "lr", "rho", "rho_growth", "projint",
              "dualint", "importance", "batch_size", "seed", "limit", "momentum",
              "weight_decay", "pretrain", "prox")
_ADMM_DEFAULTS = {"rho_growth": 1.0, "importance": "magnitude"}


def _sqjl_settings():
    return {key: getattr(FLAGS, key) for key in (
        "admm_epochs", "ft_epochs", "ft_float_epochs", "ft_optim", "ft_keep_support", "ft_start",
        "ft_kdtemp", "ft_train_centres", "ft_prune_epochs", "lr", "rho",
        "rho_growth", "projint", "dualint", "importance", "batch_size", "seed", "limit",
    )} | {"ft_refresh": _FT_REFRESH, "ft_lr": _ft_lr_setting()}


def _ft_lr_setting():
    return "lr / 10" if FLAGS.ft_lr is None else FLAGS.ft_lr


def _finished_run(args, keys, defaults=None):
    """The record of a finished run in ``args['logdir']`` run with ``args`` (their ``keys``).

    None if there is none, or it ran with other values (``defaults``: of keys that
    configs written before them lack). Lets a command run again skip the dense
    model's training, and a run whose fine-tuning is redone (or died) keep its ADMM stage.
    """
    from sqjl_tf.rundir import RunDir

    config_file = RunDir(args["logdir"]).file(RunDir.CONFIG)
    final_file = RunDir(args["logdir"]).file(RunDir.FINAL)
    if not (os.path.isfile(config_file) and os.path.isfile(final_file)):
        return None
    with open(config_file) as f:
        config = {**(defaults or {}), **json.load(f)}
    if any(config.get(key) != args[key] for key in keys):
        return None
    with open(final_file) as f:
        record = json.load(f)
    if not os.path.isfile(record.get("files", {}).get("keras", "")):
        return None
    return record


def _sqjl(dense_path, nnz, bits, work):
    """sqjl_tf at one budget; a finished run with the same settings is reused."""
    from sqjl_tf import trainer
    from sqjl_tf.rundir import RunDir

    logdir = os.path.join(work, f"sqjl_{nnz}_{bits}" + (f"_{FLAGS.tag}" if FLAGS.tag else ""))
    row_file = logdir + ".row.json"
    if os.path.isfile(row_file):
        with open(row_file) as f:
            row = json.load(f)
        if {**_SETTINGS_ADDED_LATER, **row.get("settings", {})} != _sqjl_settings():
            raise app.UsageError(
                f"{row_file} holds a finished run with other settings ({row.get('settings')}); "
                "use another --out_dir (nothing was changed)."
            )
        logging.info("sqjl_tf %s/%s: reusing the finished run in %s", nnz, bits, logdir)
        return row
    if FLAGS.table_only:
        logging.info("sqjl_tf %s/%s: no finished run in %s, left out", nnz, bits, logdir)
        return None
    start = time.time()
    admm_args = dict(mode="compress", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                     arch="caffelenet", epochs=FLAGS.admm_epochs, nnz_budget=nnz,
                     bit_budget=bits, lr=FLAGS.lr, lr_sched="cos", rho=FLAGS.rho,
                     rho_growth=FLAGS.rho_growth, prox=True,
                     projint=FLAGS.projint, dualint=FLAGS.dualint,
                     momentum=0.93, weight_decay=5e-4, batch_size=FLAGS.batch_size,
                     importance=FLAGS.importance,
                     seed=FLAGS.seed, limit=FLAGS.limit, pretrain=dense_path,
                     export=("keras",), logdir=logdir)
    admm_dir, admm = _reusable_admm(admm_args, work, nnz, bits)
    if admm is not None:
        logging.info("sqjl_tf %s/%s: reusing the finished ADMM stage in %s", nnz, bits, admm_dir)
        with open(RunDir(admm_dir).file(RunDir.METRICS)) as f:  # its epochs' wall time
            start -= sum(json.loads(line).get("seconds", 0.0) for line in f if line.strip())
    else:
        admm = trainer.run(**admm_args)
    record = admm
    if FLAGS.ft_epochs:
        start_model, widths, prune_to = record["files"]["keras"], None, None
        if FLAGS.ft_start in ("sparse", "trained"):
            start_model, widths = _sparse_start(admm_dir, admm)
        if FLAGS.ft_start == "trained":
            prune_to = admm.get("allocated_nnz") or _nonzeros(start_model)
            start_model = RunDir(admm_dir).file(RunDir.LATEST)  # W, unpruned
        record = trainer.run(mode="finetune", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                             arch="caffelenet", epochs=FLAGS.ft_epochs,
                             lr=FLAGS.lr / 10 if FLAGS.ft_lr is None else FLAGS.ft_lr,
                             float_epochs=FLAGS.ft_float_epochs, optim=FLAGS.ft_optim,
                             keep_support=FLAGS.ft_keep_support,
                             train_centres=FLAGS.ft_train_centres, prune_to=prune_to,
                             prune_epochs=FLAGS.ft_prune_epochs if prune_to else 0,
                             lr_sched="cos", momentum=0.9, batch_size=FLAGS.batch_size,
                             seed=FLAGS.seed, limit=FLAGS.limit, pretrain=start_model,
                             weightbits=widths, kdtemp=FLAGS.ft_kdtemp,
                             teacher=dense_path if FLAGS.ft_kdtemp else None,
                             export=("keras",), logdir=logdir + "_ft")
    row = {
        "method": "sqjl_tf",
        "variant": _variant(),
        "nnz_budget": nnz, "bit_budget": bits, "accuracy": record["test_accuracy"],
        "rate": record["compression_rate"],
        "within_budget": record["size_bits"] <= admm["budget_bits"],
        "layers": record["layers"], "epochs": FLAGS.admm_epochs + FLAGS.ft_epochs,
        "seconds": time.time() - start, "settings": _sqjl_settings(),
    }
    with open(row_file + ".tmp", "w") as f:
        json.dump(row, f, indent=1)
    os.replace(row_file + ".tmp", row_file)
    return row


def _reusable_admm(args, work, nnz, bits):
    """(folder, record) of a finished ADMM stage run with ``args``, else (args' logdir, None).

    Looks in this run's own folder first, then in the other tags' folders of the same
    budget: rows that differ only in their fine-tuning share one ADMM stage.
    """
    own = args["logdir"]
    others = [path for path in sorted(glob.glob(os.path.join(work, f"sqjl_{nnz}_{bits}*")))
              if os.path.isdir(path) and not path.endswith("_ft") and path != own
              and re.fullmatch(rf"sqjl_{re.escape(str(nnz))}_{bits}(_.+)?", os.path.basename(path))]
    for folder in [own] + others:
        record = _finished_run(dict(args, logdir=folder), _ADMM_KEYS, _ADMM_DEFAULTS)
        if record is not None:
            return folder, record
    return own, None


def _sparse_start(logdir, record):
    """The ADMM stage's model pruned to the budget, in full precision, and its widths.

    Stages written before the trainer saved them (``model_sparse.keras``,
    ``allocated_bits``) are rebuilt from their last checkpoint.
    """
    from sqjl_tf.rundir import RunDir

    path = RunDir(logdir).file(RunDir.model_file("model_sparse", ".keras"))
    widths = record.get("allocated_bits")
    if os.path.isfile(path) and widths:
        return path, widths
    from sqjl_tf.callback import finalize_model
    from sqjl_tf.trainer import load_admm_run

    model, state, _ = load_admm_run(logdir)
    finalize_model(model, state, quantize=False).save(path + ".tmp.keras")
    os.replace(path + ".tmp.keras", path)
    return path, [int(b) for b in state.current_bits]


def _nonzeros(model_path):
    """Nonzeros of each compressible kernel of a saved model (ADMM's allocation)."""
    import keras
    import numpy as np

    from sqjl_tf import compressible_kernels

    model = keras.models.load_model(model_path, compile=False)
    return [int(np.count_nonzero(k.variable.numpy())) for k in compressible_kernels(model)]


class _TfmotRun:
    """One TFMOT pipeline in its own legacy-Keras process (or its finished result)."""

    def __init__(self, npz, nnz, bits, variant, work):
        total = FLAGS.admm_epochs + FLAGS.ft_epochs
        self.prune = (FLAGS.tfmot_prune_epochs if FLAGS.tfmot_prune_epochs is not None
                      else max(1, 2 * total // 3))
        self.cluster = (FLAGS.tfmot_cluster_epochs if FLAGS.tfmot_cluster_epochs is not None
                        else total - self.prune)
        self.nnz, self.bits, self.variant = nnz, bits, variant
        self.out = os.path.join(work, f"tfmot_{variant}_{nnz}_{bits}.json")
        self.cmd = [sys.executable, os.path.join(HERE, "tfmot_baseline.py"), f"--weights={npz}",
                    f"--nnz_budget={nnz}", f"--bit_budget={bits}", f"--variant={variant}",
                    f"--epochs_prune={self.prune}", f"--epochs_cluster={self.cluster}",
                    f"--out={self.out}", f"--batch_size={FLAGS.batch_size}", f"--seed={FLAGS.seed}"]
        if FLAGS.data_dir:
            self.cmd.append(f"--data_dir={FLAGS.data_dir}")
        if FLAGS.limit:
            self.cmd.append(f"--limit={FLAGS.limit}")
        self.proc = None

    def finished(self) -> bool:
        """Whether a result with these settings is already on disk."""
        if not os.path.isfile(self.out):
            return False
        with open(self.out) as f:
            result = json.load(f)
        stages = result.get("stages", {})
        return (stages.get("prune", {}).get("epochs") == self.prune
                and stages.get("cluster", {}).get("epochs") == self.cluster
                and result.get("batch_size") == FLAGS.batch_size
                and result.get("seed") == FLAGS.seed
                and (FLAGS.limit is None or result.get("n_train") == FLAGS.limit))

    def start(self):
        logging.info("TFMOT %s %s/%s: %s", self.variant, self.nnz, self.bits, " ".join(self.cmd))
        self.log = open(self.out[: -len(".json")] + ".log", "w")  # a pipe could fill and block it
        self.proc = subprocess.Popen(self.cmd, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"),
                                     stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def row(self):
        """Waits for the process (if any) and returns the table row, or None on failure."""
        if self.proc is not None:
            if not finished_ok(self.proc, self.log, f"{self.variant} {self.nnz}/{self.bits}"):
                return None
        elif not self.finished():
            if FLAGS.table_only:
                logging.info("TFMOT %s %s/%s: no finished run, left out", self.variant, self.nnz,
                             self.bits)
                return None
            self.start()
            return self.row()
        with open(self.out) as f:
            result = json.load(f)
        layers = result.get("layers", [])
        if isinstance(layers, dict):
            layers = [dict(name=k, **v) for k, v in layers.items()]
        return {
            "method": "TFMOT", "variant": self.variant, "nnz_budget": self.nnz,
            "bit_budget": self.bits, "accuracy": result["accuracy"], "rate": result["rate"],
            "within_budget": result["total_bits"] <= _budget(self.nnz, self.bits),
            "layers": layers, "epochs": self.prune + self.cluster, "seconds": result["seconds"],
        }


def _variant():
    """The sqjl_tf row's label: its split of the epochs."""
    text = f"ADMM {FLAGS.admm_epochs}"
    if FLAGS.ft_epochs:
        text += f" + fine-tune {FLAGS.ft_epochs}"
        if FLAGS.ft_float_epochs:
            text += f" ({min(FLAGS.ft_float_epochs, FLAGS.ft_epochs)} in float)"
        if FLAGS.ft_optim != "sgd":
            text += f", {FLAGS.ft_optim} {_ft_lr_setting()}"
        if FLAGS.ft_keep_support:
            text += ", support kept"
        if FLAGS.ft_start == "sparse":
            text += ", from the float pruned model"
        if FLAGS.ft_start == "trained":
            text += f", pruned gradually over {FLAGS.ft_prune_epochs}"
        if FLAGS.ft_train_centres:
            text += ", centres trained"
        if FLAGS.ft_kdtemp:
            text += f", distilled (T={FLAGS.ft_kdtemp:g})"
    return text


def _sqjl_rows(work, nnz, bits):
    """Every finished sqjl_tf run of a budget in ``work`` (any --tag), most ADMM epochs first."""
    rows = []
    for path in sorted(glob.glob(os.path.join(work, f"sqjl_{nnz}_{bits}*.row.json"))):
        name = os.path.basename(path)[: -len(".row.json")]
        if name != f"sqjl_{nnz}_{bits}" and not name.startswith(f"sqjl_{nnz}_{bits}_"):
            continue  # another budget whose nnz starts with this one's digits
        with open(path) as f:
            rows.append(json.load(f))
    return sorted(rows, key=lambda r: -r["settings"]["admm_epochs"])


def _ordered(rows, budgets, work):
    """Table rows by budget: sqjl_tf runs, then the TFMOT variants; failed runs left out."""
    table = []
    for nnz, bits in budgets:
        table += _sqjl_rows(work, nnz, bits)
        table += [rows[(nnz, bits, name)] for name in FLAGS.tfmot_variants
                  if rows.get((nnz, bits, name)) is not None]
    return table


def _budget(nnz, bits):
    from sqjl_tf.budget import budget_bits

    return budget_bits([500, 25000, 400000, 5000], nnz, bits)  # LeNet-5 kernels


def _layer_text(layers):
    parts = []
    for layer in layers:
        name = layer.get("name", "?").split("/")[0]
        density = layer.get("density")
        parts.append(f"{name}: {layer.get('bits', '?')}b/{density:.3%}" if density is not None
                     else f"{name}: {layer.get('bits', '?')}b")
    return ", ".join(parts)


def _write(rows, dense_acc, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    lines = [
        "# Fashion-MNIST, LeNet-5 (caffelenet): sqjl_tf against TFMOT",
        "",
        f"Dense model: test accuracy {dense_acc:.4f}. Every model below is measured from its weights "
        "alone: bits = ceil(log2(distinct nonzero values)), rate = 32 x 430,500 / sum(bits x nnz).",
        "",
        "| method | variant | budget (nnz, bits) | accuracy | rate | per-layer bits/density | epochs | time (s) |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        over = "" if r.get("within_budget", True) else " (OVER budget)"
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['nnz_budget']}, {r['bit_budget']} | "
            f"{r['accuracy']:.4f} | {r['rate']:.0f}x{over} | {_layer_text(r['layers'])} | "
            f"{r['epochs']} | {r['seconds']:.0f} |"
        )
    with open(os.path.join(out_dir, "fashion_mnist.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "fashion_mnist.json"), "w") as f:
        json.dump({"dense_accuracy": dense_acc, "rows": rows}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed: no plot (pip install -e '.[plot]').")
        return
    series = sorted({(r["method"], r["variant"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4 + 0.2 * len(series)))  # room for the legend below
    # 9 markers against 10 colours: no two series share both
    for (method, variant), marker in zip(series, itertools.cycle("osd^v<>P*")):
        pts = sorted((r["rate"], r["accuracy"]) for r in rows
                     if r["method"] == method and r["variant"] == variant)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{method} {variant}")
    ax.axhline(dense_acc, color="gray", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression rate (x, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Fashion-MNIST LeNet-5")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15))
    fig.savefig(os.path.join(out_dir, "fashion_mnist.png"), dpi=120, bbox_inches="tight")


def _parse_budgets(specs):
    budgets = []
    for spec in specs:
        try:
            nnz, bits = spec.split(":")
            budgets.append((float(nnz), int(bits)))
        except ValueError:
            raise app.UsageError(
                f"Invalid value for flag `--budgets`. Received: {spec!r}. "
                "Expected nnz_budget:bit_budget pairs such as 0.02:3.") from None
    return budgets


_DEBIAN_DATA = "/usr/share/datasets/fashion-mnist"


def _ensure_dataset():
    """Installs Debian's dataset-fashion-mnist when no --data_dir is given and it is missing."""
    if FLAGS.data_dir or FLAGS.table_only or glob.glob(
            os.path.join(_DEBIAN_DATA, "train-images-idx3-ubyte*")):
        return
    logging.info("Fashion-MNIST not found: installing Debian's dataset-fashion-mnist "
                 "(needs root and apt).")
    install = ["apt-get", "install", "-y", "dataset-fashion-mnist"]
    for command in (install, ["apt-get", "update"], install):
        try:
            done = subprocess.run(command, capture_output=True, text=True).returncode == 0
        except OSError:  # no apt-get here
            break
        if done and command is install:
            return
    raise app.UsageError(
        "Invalid value for flag `--data_dir`. Received: None, and Debian's dataset-fashion-mnist "
        f"is not in {_DEBIAN_DATA} and could not be installed. Expected a folder holding the "
        "Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...).")


def main(argv):
    del argv
    budgets = _parse_budgets(FLAGS.budgets)  # usage errors before any training
    _ensure_dataset()
    if (FLAGS.projint == 0) != (FLAGS.dualint == 0) or (
            FLAGS.projint and FLAGS.dualint % FLAGS.projint):
        raise app.UsageError(
            f"Invalid value for flag `--dualint`. Received: {FLAGS.dualint}. "
            f"Expected a multiple of projint={FLAGS.projint} (0 if projint is 0).")
    if FLAGS.ft_prune_epochs and (FLAGS.ft_start != "trained"
                                  or FLAGS.ft_prune_epochs > FLAGS.ft_float_epochs):
        raise app.UsageError(
            f"Invalid value for flag `--ft_prune_epochs`. Received: {FLAGS.ft_prune_epochs}. "
            f"Expected 0 unless --ft_start=trained, and at most --ft_float_epochs="
            f"{FLAGS.ft_float_epochs} (pruning is done in full precision).")
    work = os.path.join(FLAGS.out_dir, "fashion_mnist_runs")
    if not FLAGS.table_only:  # a table-only call creates nothing before its checks
        os.makedirs(work, exist_ok=True)
    dense_path, record = _pretrain(work)
    dense_acc = record["test_accuracy"] if record else None
    if dense_acc is None:
        from sqjl_tf import trainer

        dense_acc = trainer.run(mode="evaluate", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                                arch="caffelenet", pretrain=dense_path,
                                limit=FLAGS.limit)["test_accuracy"]
    npz = os.path.join(work, "dense_weights.npz")  # the TFMOT processes' start
    tfmot = [_TfmotRun(npz, nnz, bits, variant, work)
             for nnz, bits in budgets for variant in (FLAGS.tfmot_variants if FLAGS.tfmot else ())]
    waiting = [] if FLAGS.table_only else [run for run in tfmot if not run.finished()]
    if waiting:
        _dense_npz(dense_path, work)

    lock = threading.Lock()

    def launcher():  # keeps up to --jobs TFMOT processes running beside sqjl_tf, in order
        while True:
            with lock:
                while waiting and sum(r.proc is not None and r.proc.poll() is None
                                      for r in tfmot) < FLAGS.jobs:
                    waiting.pop(0).start()
                if not waiting:
                    return
            time.sleep(5)

    if FLAGS.jobs:
        threading.Thread(target=launcher, daemon=True).start()
    rows = {}
    for nnz, bits in budgets:
        rows[(nnz, bits, "sqjl")] = _sqjl(dense_path, nnz, bits, work)
        _write(_ordered(rows, budgets, work), dense_acc, FLAGS.out_dir)
        if not FLAGS.jobs:  # one after the other, as the table reads
            for run in tfmot:
                if (run.nnz, run.bits) == (nnz, bits):
                    rows[(nnz, bits, run.variant)] = run.row()
                    _write(_ordered(rows, budgets, work), dense_acc, FLAGS.out_dir)
    for run in tfmot:  # in table order
        if (run.nnz, run.bits, run.variant) in rows:  # done above (--jobs=0)
            continue
        while True:
            with lock:
                if run not in waiting:
                    break
            time.sleep(5)
        rows[(run.nnz, run.bits, run.variant)] = run.row()  # waits for its process
        _write(_ordered(rows, budgets, work), dense_acc, FLAGS.out_dir)
    logging.info("wrote %s", os.path.join(FLAGS.out_dir, "fashion_mnist.md"))


if __name__ == "__main__":
    app.run(main)
