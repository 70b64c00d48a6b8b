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
flags.DEFINE_list("runs", None, "ADMM run folders (each with config.json and latest.ckpt/).")
flags.DEFINE_list("tfmot", [], "TFMOT result files (tfmot_baseline.py --out) to show beside.")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's location).")
flags.mark_flag_as_required("runs")


def _checked_runs(folders):
    """Each folder's config.json as a dict; usage errors before any work."""
    configs = []
    for folder in folders:
        # config.json, and the checkpoint folder's pointer (sqjl_tf.checkpoint, RunDir.LATEST)
        files = [os.path.join(folder, name) for name in ("config.json", "latest.ckpt/checkpoint")]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise app.UsageError(
                f"Invalid value for flag `--runs`. Received: {folder!r}. Expected an ADMM run "
                f"folder with config.json and latest.ckpt/ (missing: {', '.join(missing)}).")
        with open(files[0]) as f:
            cfg = json.load(f)
        if cfg.get("mode") != "compress":
            raise app.UsageError(
                f"Invalid value for flag `--runs`. Received: {folder!r}, a run of mode "
                f"{cfg.get('mode')!r}. Expected a compression (ADMM) run.")
        configs.append(cfg)
    return configs


def _run_row(folder, cfg, test_ds, info):
    import keras
    import numpy as np

    from sqjl_tf.models import build_model
    from sqjl_tf.trainer import load_admm_run

    model, state, meta = load_admm_run(
        folder, build_model(cfg["arch"], info.num_classes, info.input_shape))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    trained = [np.array(k.variable.numpy()) for k in state.kernels]
    sparse, finalised = state.sparse_weights(), state.finalized_weights()

    def accuracy_with(kernels):
        for k, w in zip(state.kernels, kernels):
            k.variable.assign(w)
        return model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"]

    return {
        "run": os.path.basename(folder.rstrip("/")), "epoch": meta.get("epoch"),
        "rho": float(state.rho.numpy()), "residual": float(np.sum(state.residuals.numpy())),
        "float W": accuracy_with(trained), "sparse float": accuracy_with(sparse),
        "finalised": accuracy_with(finalised),
    }


def main(argv):
    del argv
    configs = _checked_runs(FLAGS.runs)
    from sqjl_tf.data import load_dataset

    test_ds, info = load_dataset("fashion_mnist", FLAGS.data_dir, 1000, "test")
    lines = ["| run | epoch | rho | residual | float W | sparse float | finalised |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for folder, cfg in zip(FLAGS.runs, configs):
        r = _run_row(folder, cfg, test_ds, info)
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
