"""``sqjl_tf.compress`` on Fashion-MNIST LeNet-5: one call, given only a target rate.

Starts from the LeNet benchmark's dense model (``benchmark.py`` writes it) and
compresses it with ``compress(model, train, test, target_rate=R, epochs=E)`` at
each rate, one seed per call; writes a row per (rate, seed) as JSON beside a
Markdown table in ``--out_dir``.

    python experiments/fashion_mnist/one_call.py --dense=runs/dense/model_dense.keras \
        --rates=1975,533 --epochs=32 --seeds=1
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_string("dense", None, "The trained dense caffelenet .keras.", required=True)
flags.DEFINE_list("rates", ["1975", "533"], "Target compression rates.")
flags.DEFINE_list("seeds", ["1"], "Seeds, one compress call each.")
flags.DEFINE_integer("epochs", 32, "The epoch budget of each call.", lower_bound=3)
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX files (default: Debian's package).")
flags.DEFINE_integer("limit", None, "Use only N examples per split (smoke runs).", lower_bound=1)
flags.DEFINE_string("out_dir", os.path.join(ROOT, "experiments", "results"), "Where rows go.")
flags.DEFINE_string("name", "fashion_mnist_one_call", "File stem of the rows and table.")


def _row(rate: float, seed: int):
    import keras

    import sqjl_tf

    train, _ = sqjl_tf.load_dataset("fashion_mnist", FLAGS.data_dir, 256, "train", seed=seed,
                                    limit=FLAGS.limit)
    test, _ = sqjl_tf.load_dataset("fashion_mnist", FLAGS.data_dir, 1000, "test",
                                   limit=FLAGS.limit)
    model = keras.models.load_model(FLAGS.dense, compile=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    start = time.time()
    result = sqjl_tf.compress(model, train, test, target_rate=rate, epochs=FLAGS.epochs,
                              loss=loss, seed=seed, verbose=2)
    seconds = time.time() - start
    result.model.compile(loss=loss, metrics=["accuracy"])
    accuracy = result.model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    report = result.report
    empty = [s.name for s in report.layers if s.nnz == 0]
    return {"target_rate": rate, "seed": seed, "epochs": FLAGS.epochs, "accuracy": accuracy,
            "rate": report.compression_rate, "within_budget": report.within_budget,
            "budget_used": report.budget_used, "empty_layers": empty,
            "bits": result.bits, "nnz": result.nnz, "split": result.epochs,
            "seconds": seconds}


def _table(rows):
    lines = ["| target | seed | epochs | accuracy | rate (weights) | within budget | bits | "
             "nonzeros | minutes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["target_rate"], r["seed"])):
        lines.append(f"| {r['target_rate']:g}x | {r['seed']} | {r['epochs']} | "
                     f"{100 * r['accuracy']:.2f}% | {r['rate']:.1f}x | {r['within_budget']} | "
                     f"{r['bits']} | {r['nnz']} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    rows_file = os.path.join(FLAGS.out_dir, FLAGS.name + ".json")
    rows = []
    if os.path.isfile(rows_file):
        with open(rows_file) as f:
            rows = json.load(f)
    for rate in [float(r) for r in FLAGS.rates]:
        for seed in [int(s) for s in FLAGS.seeds]:
            if any(r["target_rate"] == rate and r["seed"] == seed and r["epochs"] == FLAGS.epochs
                   for r in rows):
                logging.info("%gx seed %d: done already in %s", rate, seed, rows_file)
                continue
            row = _row(rate, seed)
            logging.info("%gx seed %d: %.2f%% at %.1fx in %.1f min", rate, seed,
                         100 * row["accuracy"], row["rate"], row["seconds"] / 60)
            if os.path.isfile(rows_file):  # another process may have added rows meanwhile
                with open(rows_file) as f:
                    rows = json.load(f)
            rows.append(row)
            with open(rows_file + ".tmp", "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(rows_file + ".tmp", rows_file)
            with open(os.path.join(FLAGS.out_dir, FLAGS.name + ".md"), "w") as f:
                f.write(_table(rows))


if __name__ == "__main__":
    app.run(main)
