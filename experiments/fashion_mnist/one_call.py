"""``sqjl_tf.compress`` on Fashion-MNIST LeNet-5: one call, given only a target rate.

Starts from the LeNet benchmark's dense model (``benchmark.py`` writes it; without
``--dense`` from an untrained LeNet-5, which ``compress`` trains densely first, as the
quickstart) and compresses it with ``compress(model, train, test, target_rate=R,
epochs=E)`` at each rate, one seed per call, with ``--set``'s ``Recipe`` settings
changed; writes a row per (rate, seed, epochs, limit, start, recipe) as JSON beside a
Markdown table in ``--out_dir``. A row is reused only when all of these match: its whole
``Recipe`` (so a row made under another default is not taken for today's) and, from a
dense start, the dense file's SHA-256. Rows that recorded no recipe are never reused.

    python experiments/fashion_mnist/one_call.py --dense=runs/dense/model_dense.keras \
        --rates=1975,533 --epochs=32 --seeds=1
    python experiments/fashion_mnist/one_call.py --rates=533 --epochs=10 --seeds=1,2 \
        --set=finetune_weight_decay=0.5 --name=fashion_mnist_quickstart_decay
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments")]
import recipe_settings  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dense", None, "The trained dense caffelenet .keras (default: untrained).")
flags.DEFINE_list("set", [], "Recipe settings to change, as name=value (default: compress's own).")
flags.DEFINE_list("rates", ["1975", "533"], "Target compression rates.")
flags.DEFINE_list("seeds", ["1"], "Seeds, one compress call each.")
flags.DEFINE_integer("epochs", 32, "The epoch budget of each call.", lower_bound=3)
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX files (default: Debian's package).")
flags.DEFINE_integer("limit", None, "Use only N examples per split (smoke runs).", lower_bound=1)
flags.DEFINE_string("out_dir", os.path.join(ROOT, "experiments", "results"), "Where rows go.")
flags.DEFINE_string("name", "fashion_mnist_one_call", "File stem of the rows and table.")


def _row(key: dict, recipe):
    """The row of one compress() call at ``key``'s rate and seed."""
    import keras

    import sqjl_tf

    rate, seed = key["target_rate"], key["seed"]
    train, _ = sqjl_tf.load_dataset("fashion_mnist", FLAGS.data_dir, 256, "train", seed=seed,
                                    limit=FLAGS.limit)
    test, _ = sqjl_tf.load_dataset("fashion_mnist", FLAGS.data_dir, 1000, "test",
                                   limit=FLAGS.limit)
    if FLAGS.dense:
        model = keras.models.load_model(FLAGS.dense, compile=False)
    else:
        keras.utils.set_random_seed(seed)
        model = sqjl_tf.build_model("caffelenet", 10)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    start = time.time()
    result = sqjl_tf.compress(model, train, test, target_rate=rate, epochs=FLAGS.epochs,
                              loss=loss, seed=seed, recipe=recipe, verbose=2)
    seconds = time.time() - start
    result.model.compile(loss=loss, metrics=["accuracy"])
    accuracy = result.model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    report = result.report
    empty = [s.name for s in report.layers if s.nnz == 0]
    return {**key, "set": sorted(FLAGS.set), "accuracy": accuracy,
            "rate": report.compression_rate, "within_budget": report.within_budget,
            "budget_used": report.budget_used, "empty_layers": empty,
            "bits": result.bits, "nnz": result.nnz, "split": result.epochs,
            "seconds": seconds}


def _run_key(recipe) -> dict:
    """What besides rate and seed tells this run's rows apart: epochs, limit, start, the
    whole recipe and, from a dense start, the dense file's SHA-256 (read once, at the start)."""
    import sqjl_tf

    key = {"epochs": FLAGS.epochs, "limit": FLAGS.limit,
           "start": "dense" if FLAGS.dense else "untrained",
           # JSON round trip: the key compares equal to the one read back from the rows file.
           "recipe": json.loads(json.dumps(dataclasses.asdict(recipe or sqjl_tf.Recipe())))}
    if FLAGS.dense:
        with open(FLAGS.dense, "rb") as f:
            key["dense_sha256"] = hashlib.sha256(f.read()).hexdigest()
    return key


def _done(rows, key) -> bool:
    """Whether ``rows`` hold a row of ``key``; rows without a recorded recipe never do."""
    return any("recipe" in r and all(r.get(k) == v for k, v in key.items()) for r in rows)


def _table(rows):
    lines = ["| target | seed | epochs | start | settings | accuracy | rate (weights) | "
             "within budget | bits | nonzeros | minutes |", "|---" * 11 + "|"]
    for r in sorted(rows, key=lambda r: (-r["target_rate"], r.get("set", []), r["seed"])):
        lines.append(f"| {r['target_rate']:g}x | {r['seed']} | {r['epochs']} | "
                     f"{r.get('start', 'dense')} | {_settings(r)} | "
                     f"{100 * r['accuracy']:.2f}% | {r['rate']:.1f}x | {r['within_budget']} | "
                     f"{r['bits']} | {r['nnz']} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def _settings(row) -> str:
    shown = ", ".join(row.get("set", [])) or "default"
    return shown if "recipe" in row else shown + " (recipe not recorded)"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}.")
    try:
        recipe = recipe_settings.parse(FLAGS.set) if FLAGS.set else None
    except ValueError as err:
        raise app.UsageError(f"Invalid value for flag `--set`. {err}") from None
    if FLAGS.dense and not os.path.isfile(FLAGS.dense):
        raise app.UsageError(f"Invalid value for flag `--dense`. Received: {FLAGS.dense!r}. "
                             "Expected a .keras file (the LeNet benchmark's dense model).")
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    rows_file = os.path.join(FLAGS.out_dir, FLAGS.name + ".json")
    rows = []
    if os.path.isfile(rows_file):
        with open(rows_file) as f:
            rows = json.load(f)
    run_key = _run_key(recipe)
    for rate in [float(r) for r in FLAGS.rates]:
        for seed in [int(s) for s in FLAGS.seeds]:
            key = {"target_rate": rate, "seed": seed, **run_key}
            if _done(rows, key):
                logging.info("%gx seed %d: done already in %s", rate, seed, rows_file)
                continue
            if any("recipe" not in r and r["target_rate"] == rate and r["seed"] == seed
                   for r in rows):
                logging.info("%gx seed %d: %s has a row that recorded no recipe (made before "
                             "recipes were recorded); running it again", rate, seed, rows_file)
            row = _row(key, recipe)
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
