"""Where a compressed run loses accuracy: training, pruning, or quantization.

Loads the latest checkpoint of sqjl_tf ADMM runs (the benchmark's ``sqjl_*``
folders, or any ``run.py --mode=compress`` logdir) and measures the test
accuracy of the same trained weights W at three points of the way to the
shipped model:

* ``float W``: the trained kernels as they are (dense, float32);
* ``sparse float``: W pruned by the sparse projection with the run's current
  bit widths (the budget's nonzeros), not quantized;
* ``finalised``: sparse, then each layer quantized to its own codebook: what
  the ADMM stage hands to fine-tuning.

The drop from ``sparse float`` to ``finalised`` is the price of W not having
converged to its codebooks (the ADMM residual); the TFMOT pipeline's matching
figures are its pruned accuracy and its final accuracy (``stages.prune.accuracy``
and ``accuracy`` in its result file), printed beside when ``--tfmot`` names one.

Usage:
    python experiments/fashion_mnist/diagnose.py \
        --runs=<out_dir>/fashion_mnist_runs/sqjl_0.02_3[,...] \
        [--tfmot=<out_dir>/fashion_mnist_runs/tfmot_hand_0.02_3.json]
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "ADMM run folders (each with config.json and latest.ckpt.npz).")
flags.DEFINE_list("tfmot", [], "TFMOT result files (tfmot_baseline.py --out) to show beside.")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's location).")
flags.mark_flag_as_required("runs")


def _run_row(folder, test_ds, info):
    import numpy as np

    from sqjl_tf import projections
    from sqjl_tf.admm import ADMMConfig, ADMMState
    from sqjl_tf.checkpoint import load_checkpoint
    from sqjl_tf.models import build_model
    from sqjl_tf.trainer import _accuracy

    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    model = build_model(cfg["arch"], info.num_classes, info.input_shape)
    state = ADMMState(ADMMConfig(
        nnz_budget=cfg["nnz_budget"], bit_budget=cfg["bit_budget"], rho=cfg["rho"],
        projint=cfg["projint"], dualint=cfg["dualint"], prox=cfg["prox"],
        importance=cfg.get("importance", "magnitude"), rho_growth=cfg.get("rho_growth", 1.0)),
        model)
    meta = load_checkpoint(os.path.join(folder, "latest.ckpt.npz"), model, admm_state=state)
    trained = [np.array(k.variable.numpy()) for k in state.kernels]

    def accuracy_with(kernels):
        for k, w in zip(state.kernels, kernels):
            k.variable.assign(w)
        return _accuracy(model, test_ds)["accuracy"]

    sparse, _ = projections.sparse_projection(trained, state.current_bits, state.budget_bits)
    return {
        "run": os.path.basename(folder.rstrip("/")), "epoch": meta.get("epoch"),
        "rho": float(state.rho.numpy()), "residual": float(np.sum(state.residuals.numpy())),
        "float W": accuracy_with(trained), "sparse float": accuracy_with(sparse),
        "finalised": accuracy_with(state.finalized_weights()),
    }


def main(argv):
    del argv
    from sqjl_tf.data import load_dataset

    test_ds, info = load_dataset("fashion_mnist", FLAGS.data_dir, 1000, "test")
    lines = ["| run | epoch | rho | residual | float W | sparse float | finalised |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for folder in FLAGS.runs:
        r = _run_row(folder, test_ds, info)
        lines.append(f"| {r['run']} | {r['epoch']} | {r['rho']:.3g} | {r['residual']:.2f} | "
                     f"{r['float W']:.4f} | {r['sparse float']:.4f} | {r['finalised']:.4f} |")
    for path in FLAGS.tfmot:
        with open(path) as f:
            t = json.load(f)
        pruned = t.get("stages", {}).get("prune", {}).get("accuracy")
        lines.append(f"| TFMOT {t['variant']} {t['nnz_budget']}/{t['bit_budget']} | | | | | "
                     f"{pruned if pruned is None else format(pruned, '.4f')} | "
                     f"{t['accuracy']:.4f} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
