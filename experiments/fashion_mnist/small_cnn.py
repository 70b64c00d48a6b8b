"""A user's small CNN (not LeNet) on Fashion-MNIST: the callback by hand against ``compress``.

Pretrains a small CNN for 2 epochs, then compresses copies of it to ~533x two ways:

* the callback flow a user writes from the API docs (``ADMMCallback`` + ``ADMMOptimizer``
  around SGD, then ``finalize``), for ``--snippet_epochs`` epochs;
* one ``sqjl_tf.compress(model, train, test, target_rate=533, epochs=--epochs)`` call.

Prints and writes (``--out``) the dense, snippet and ``compress`` test accuracies, each model
measured from its weights.

    python experiments/fashion_mnist/small_cnn.py --epochs=6
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
flags.DEFINE_integer("pretrain_epochs", 2, "Dense epochs before compression.", lower_bound=1)
flags.DEFINE_integer("snippet_epochs", 3, "Epochs of the by-hand callback flow.", lower_bound=1)
flags.DEFINE_integer("epochs", 6, "The epoch budget of the compress call.", lower_bound=3)
flags.DEFINE_float("target_rate", 533.0, "Target compression rate.")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX files (default: Debian's package).")
flags.DEFINE_integer("limit", None, "Use only N examples per split (smoke runs).", lower_bound=1)
flags.DEFINE_integer("seed", 1, "Random seed.")
flags.DEFINE_string("out", os.path.join(ROOT, "experiments", "results", "small_cnn.json"),
                    "Where the figures go.")


def _small_cnn():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ], name="small_cnn")


def _accuracy(model, test, loss):
    model.compile(loss=loss, metrics=["accuracy"])
    return float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])


def main(argv):
    del argv
    import keras

    import sqjl_tf

    keras.utils.set_random_seed(FLAGS.seed)
    train, _ = sqjl_tf.load_dataset("fashion_mnist", FLAGS.data_dir, 256, "train",
                                    seed=FLAGS.seed, limit=FLAGS.limit)
    test, _ = sqjl_tf.load_dataset("fashion_mnist", FLAGS.data_dir, 1000, "test",
                                   limit=FLAGS.limit)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    dense = _small_cnn()
    dense.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    dense.fit(train, epochs=FLAGS.pretrain_epochs, verbose=2)
    figures = {"dense": _accuracy(dense, test, loss), "target_rate": FLAGS.target_rate}

    # The by-hand flow (the callback and the optimizer wrapper, as the API docs show them).
    start = time.time()
    model = keras.models.clone_model(dense)
    model.set_weights(dense.get_weights())
    nnz_budget, bit_budget = sqjl_tf.split_budget(FLAGS.target_rate)
    cb = sqjl_tf.ADMMCallback(nnz_budget=nnz_budget, bit_budget=bit_budget, rho=0.05)
    model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01, momentum=0.9), cb,
                                                  weight_decay=5e-4),
                  loss=loss, metrics=["accuracy"])
    model.fit(train, validation_data=test, epochs=FLAGS.snippet_epochs, callbacks=[cb], verbose=2)
    by_hand = cb.finalize()
    figures["by_hand"] = _accuracy(by_hand, test, loss)
    figures["by_hand_rate"] = sqjl_tf.compression_report(by_hand).compression_rate
    figures["by_hand_epochs"] = FLAGS.snippet_epochs
    figures["by_hand_minutes"] = (time.time() - start) / 60

    start = time.time()
    result = sqjl_tf.compress(dense, train, test, target_rate=FLAGS.target_rate,
                              epochs=FLAGS.epochs, loss=loss, seed=FLAGS.seed, verbose=2)
    figures["compress"] = _accuracy(result.model, test, loss)
    figures["compress_rate"] = result.report.compression_rate
    figures["compress_within_budget"] = result.report.within_budget
    figures["compress_epochs"] = result.epochs
    figures["compress_minutes"] = (time.time() - start) / 60
    logging.info("small CNN at ~%gx: dense %.2f%%, by hand %.2f%% (%d epochs, %.1fx), compress "
                 "%.2f%% (%d epochs, %.1fx)", FLAGS.target_rate, 100 * figures["dense"],
                 100 * figures["by_hand"], FLAGS.snippet_epochs, figures["by_hand_rate"],
                 100 * figures["compress"], FLAGS.epochs, figures["compress_rate"])
    with open(FLAGS.out, "w") as f:
        json.dump(figures, f, indent=1)


if __name__ == "__main__":
    app.run(main)
