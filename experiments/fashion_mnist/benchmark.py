"""Fashion-MNIST LeNet-5 across budgets: sqjl_tf against the TFMOT pipeline, one command.

1. pretrains the dense ``caffelenet`` on the full Fashion-MNIST (or reuses ``--dense``);
2. compresses it with sqjl_tf at each budget (``--admm_epochs`` of ADMM, then
   ``--ft_epochs`` of fine-tuning), from the same weights;
3. runs the TFMOT pipeline (uniform sparsity, and the hand-tuned variant) at the
   same budgets and the same total epochs, each in its own legacy-Keras process;
4. measures every final model from its weights alone (nnz, distinct values -> bits,
   rate), its test accuracy and wall time;
5. writes ``experiments/results/fashion_mnist.md`` and ``fashion_mnist.png``.

Usage (full run; hours on 2 CPU cores):
    python experiments/fashion_mnist/benchmark.py
Smoke run:
    python experiments/fashion_mnist/benchmark.py --limit=512 --pretrain_epochs=1 \
        --admm_epochs=1 --ft_epochs=0 --tfmot_prune_epochs=1 --tfmot_cluster_epochs=0 \
        --out_dir=/tmp/fm_smoke
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's location).")
flags.DEFINE_string("dense", None, "A trained dense caffelenet .keras; pretrained here if absent.")
flags.DEFINE_integer("pretrain_epochs", 10, "Epochs of dense pretraining.", lower_bound=1)
flags.DEFINE_list("budgets", ["0.0054:3", "0.02:3", "0.08:4"], "nnz_budget:bit_budget pairs.")
flags.DEFINE_integer("admm_epochs", 30, "Epochs of ADMM compression.", lower_bound=1)
flags.DEFINE_integer("ft_epochs", 2, "Epochs of fine-tuning after ADMM.", lower_bound=0)
flags.DEFINE_float("lr", 0.03, "ADMM learning rate (cosine); fine-tuning uses lr / 10.")
flags.DEFINE_float("rho", 0.05, "ADMM rho.")
flags.DEFINE_integer("projint", 20, "Batches between sparse projections.", lower_bound=0)
flags.DEFINE_integer("dualint", 240, "Batches between dual updates: about one epoch at batch 256, "
                     "as the reference; a multiple of projint.", lower_bound=0)
flags.DEFINE_enum("importance", "magnitude", ["magnitude", "fisher"],
                  "sqjl_tf's sparse-projection importance (see run.py --importance).")
flags.DEFINE_integer("batch_size", 256, "Batch size.", lower_bound=1)
flags.DEFINE_bool("tfmot", True, "Also run the TFMOT pipelines (needs the [tfmot] extra).")
flags.DEFINE_list("tfmot_variants", ["uniform", "hand"], "TFMOT variants.")
flags.DEFINE_integer("tfmot_prune_epochs", None, "TFMOT pruning epochs (default: 2/3 of ADMM's total).")
flags.DEFINE_integer("tfmot_cluster_epochs", None, "TFMOT clustering epochs (default: the rest).")
flags.DEFINE_integer("limit", None, "Use only N examples per split (smoke runs).", lower_bound=1)
flags.DEFINE_string("out_dir", os.path.join(ROOT, "experiments", "results"), "Where results go.")
flags.DEFINE_integer("seed", 1, "Random seed.")


def _pretrain(work):
    from sqjl_tf import trainer

    if FLAGS.dense:
        return FLAGS.dense, None
    record = trainer.run(mode="pretrain", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                         arch="caffelenet", epochs=FLAGS.pretrain_epochs, lr=0.01, lr_sched="cos",
                         momentum=0.9, weight_decay=5e-4, batch_size=FLAGS.batch_size,
                         seed=FLAGS.seed, limit=FLAGS.limit, export=("keras",),
                         logdir=os.path.join(work, "dense"))
    return record["files"]["keras"], record


def _dense_npz(dense_path, work):
    import keras
    import numpy as np

    model = keras.models.load_model(dense_path, compile=False)
    path = os.path.join(work, "dense_weights.npz")
    np.savez(path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    return path


def _sqjl(dense_path, nnz, bits, work):
    from sqjl_tf import trainer

    start = time.time()
    logdir = os.path.join(work, f"sqjl_{nnz}_{bits}")
    record = trainer.run(mode="compress", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                         arch="caffelenet", epochs=FLAGS.admm_epochs, nnz_budget=nnz,
                         bit_budget=bits, lr=FLAGS.lr, lr_sched="cos", rho=FLAGS.rho, prox=True,
                         projint=FLAGS.projint,
                         dualint=FLAGS.dualint,
                         momentum=0.93, weight_decay=5e-4, batch_size=FLAGS.batch_size,
                         importance=FLAGS.importance,
                         seed=FLAGS.seed, limit=FLAGS.limit, pretrain=dense_path,
                         export=("keras",), logdir=logdir)
    admm = record
    if FLAGS.ft_epochs:
        record = trainer.run(mode="finetune", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                             arch="caffelenet", epochs=FLAGS.ft_epochs, lr=FLAGS.lr / 10,
                             lr_sched="cos", momentum=0.9, batch_size=FLAGS.batch_size,
                             seed=FLAGS.seed, limit=FLAGS.limit, pretrain=record["files"]["keras"],
                             export=("keras",), logdir=logdir + "_ft")
    return {
        "method": "sqjl_tf", "variant": "ADMM" + (" + fine-tune" if FLAGS.ft_epochs else ""),
        "nnz_budget": nnz, "bit_budget": bits, "accuracy": record["test_accuracy"],
        "rate": record["compression_rate"],
        "within_budget": record["size_bits"] <= admm["budget_bits"],
        "layers": record["layers"], "epochs": FLAGS.admm_epochs + FLAGS.ft_epochs,
        "seconds": time.time() - start,
    }


def _tfmot(npz, nnz, bits, variant, work):
    total = FLAGS.admm_epochs + FLAGS.ft_epochs
    prune = FLAGS.tfmot_prune_epochs if FLAGS.tfmot_prune_epochs is not None else max(1, 2 * total // 3)
    cluster = FLAGS.tfmot_cluster_epochs if FLAGS.tfmot_cluster_epochs is not None else total - prune
    out = os.path.join(work, f"tfmot_{variant}_{nnz}_{bits}.json")
    cmd = [sys.executable, os.path.join(HERE, "tfmot_baseline.py"), f"--weights={npz}",
           f"--nnz_budget={nnz}", f"--bit_budget={bits}", f"--variant={variant}",
           f"--epochs_prune={prune}", f"--epochs_cluster={cluster}", f"--out={out}",
           f"--batch_size={FLAGS.batch_size}", f"--seed={FLAGS.seed}"]
    if FLAGS.data_dir:
        cmd.append(f"--data_dir={FLAGS.data_dir}")
    if FLAGS.limit:
        cmd.append(f"--limit={FLAGS.limit}")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        logging.error("TFMOT %s %s/%s failed:\n%s", variant, nnz, bits, proc.stderr[-3000:])
        return None
    result = json.load(open(out))
    layers = result.get("layers", [])
    if isinstance(layers, dict):
        layers = [dict(name=k, **v) for k, v in layers.items()]
    return {
        "method": "TFMOT", "variant": variant, "nnz_budget": nnz, "bit_budget": bits,
        "accuracy": result["accuracy"], "rate": result["rate"],
        "within_budget": result["total_bits"] <= _budget(nnz, bits),
        "layers": layers, "epochs": prune + cluster, "seconds": time.time() - start,
    }


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
    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, variant), marker in zip(
        sorted({(r["method"], r["variant"]) for r in rows}), "osd^v"
    ):
        pts = sorted((r["rate"], r["accuracy"]) for r in rows
                     if r["method"] == method and r["variant"] == variant)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{method} {variant}")
    ax.axhline(dense_acc, color="gray", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression rate (x, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Fashion-MNIST LeNet-5")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "fashion_mnist.png"), dpi=120)


def main(argv):
    del argv
    work = os.path.join(FLAGS.out_dir, "fashion_mnist_runs")
    os.makedirs(work, exist_ok=True)
    dense_path, record = _pretrain(work)
    dense_acc = record["test_accuracy"] if record else None
    if dense_acc is None:
        from sqjl_tf import trainer

        dense_acc = trainer.run(mode="evaluate", dataset="fashion_mnist", data_dir=FLAGS.data_dir,
                                arch="caffelenet", pretrain=dense_path,
                                limit=FLAGS.limit)["test_accuracy"]
    npz = _dense_npz(dense_path, work)
    rows = []
    for spec in FLAGS.budgets:
        nnz, bits = spec.split(":")
        nnz, bits = float(nnz), int(bits)
        rows.append(_sqjl(dense_path, nnz, bits, work))
        _write(rows, dense_acc, FLAGS.out_dir)
        if FLAGS.tfmot:
            for variant in FLAGS.tfmot_variants:
                row = _tfmot(npz, nnz, bits, variant, work)
                if row is not None:
                    rows.append(row)
                    _write(rows, dense_acc, FLAGS.out_dir)
    logging.info("wrote %s", os.path.join(FLAGS.out_dir, "fashion_mnist.md"))


if __name__ == "__main__":
    app.run(main)
