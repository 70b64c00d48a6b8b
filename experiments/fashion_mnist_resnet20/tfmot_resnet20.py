"""TFMOT peer of the Fashion-MNIST ResNet-20 benchmark: prune, then cluster.

Runs in its own process on legacy Keras 2 (``tf_keras``): TensorFlow Model
Optimization 0.8.1 does not support Keras 3. It never imports ``sqjl_tf``.

1. Builds ResNet-20 for 28x28x1 with the layers, names, shapes and order of
   ``sqjl_tf.build_model("resnet20", 10, (28, 28, 1))`` (3x3 stem, three stages
   of three basic blocks with 16/32/64 channels, 1x1 projection shortcuts,
   PyTorch-style zero padding and BatchNorm) and loads ``--weights``: an npz of
   every layer's weights keyed ``<layer>.<i>`` (``benchmark.py`` writes it from
   the Keras 3 model). With ``--expect_logits`` (the Keras 3 model's logits on the
   first test images) it checks the transfer first: the logits must agree, or it
   stops before any training.
2. ``prune_low_magnitude`` with a ``PolynomialDecay`` schedule from 0 to the
   target sparsity over ``--prune_end_frac`` of ``--epochs_prune`` epochs, then
   ``strip_pruning``. ``uniform``: the whole model wrapped with one sparsity,
   ``1 - nnz_budget``, for every conv and dense kernel (TFMOT's default).
   ``practitioner``: the first conv and the classifier left dense (8 bits), the
   other kernels pruned to one density that fits what is left of the budget
   (``allocation.py``).
3. Sparsity-preserving ``cluster_weights`` with ``2**bits`` clusters per kernel
   (the practitioner's dense layers 256; TFMOT leaves a conv with no more weights
   than clusters unclustered: the practitioner's conv1, 144 weights, trains dense
   and stays within 8 bits), k-means++ with a per-layer fallback to LINEAR, fine-tuned
   for ``--epochs_cluster`` epochs (Adam 1e-5, TFMOT's tutorial), then
   ``strip_clustering``.
4. Measures the final kernels (nonzeros, distinct nonzero values, bits =
   ceil(log2(distinct))), the test accuracy, and writes the weights (``--weights_out``,
   same keys as ``--weights``) and a JSON result (``--out``).

Usage:

    python experiments/fashion_mnist_resnet20/tfmot_resnet20.py --weights=dense.npz \\
        --nnz_budget=0.04 --bit_budget=3 --variant=uniform --epochs_prune=13 \\
        --epochs_cluster=7 --out=tfmot_uniform.json

(``TF_USE_LEGACY_KERAS=1`` is set by the script itself before TensorFlow is imported.)
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from allocation import (  # noqa: E402
    CLUSTER_LR, LAYERS, TOTAL_KERNEL, VARIANTS, allocation, budget_bits)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fashion_mnist"))
from idx_numpy import find_idx, read_idx  # noqa: E402  (the LeNet benchmark's folder)

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "npz of the dense ResNet-20 (keys <layer>.<i>).",
                    required=True)
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (default: Debian's location).")
flags.DEFINE_float("nnz_budget", 0.04, "Kept fraction of the 270,608 kernel weights.")
flags.DEFINE_integer("bit_budget", 3, "Bits per kept weight: 2**bits clusters (zero included).",
                     lower_bound=1, upper_bound=8)
flags.DEFINE_enum("variant", "uniform", list(VARIANTS), "Per-layer allocation (allocation.py).")
flags.DEFINE_integer("epochs_prune", 13, "Epochs of pruning fine-tuning.", lower_bound=0)
flags.DEFINE_integer("epochs_cluster", 7, "Epochs of clustering fine-tuning.", lower_bound=0)
flags.DEFINE_integer("batch_size", 128, "Batch size of both stages.", lower_bound=1)
flags.DEFINE_integer("limit", None, "Use only the first N train and test examples.",
                     lower_bound=1)
flags.DEFINE_string("out", "tfmot_resnet20.json", "JSON result file.")
flags.DEFINE_string("weights_out", None, "npz of the final weights (default: --out's stem .npz).")
flags.DEFINE_string("expect_logits", None, "npy of the Keras 3 dense model's logits on the first "
                    "test images: the transferred model must match them.")
flags.DEFINE_float("lr_prune", 1e-3, "Adam learning rate of the pruning stage.")
flags.DEFINE_float("lr_cluster", CLUSTER_LR, "Adam learning rate of the clustering stage.")
flags.DEFINE_float("prune_end_frac", 0.8, "PolynomialDecay reaches the target sparsity after "
                   "this fraction of the pruning steps; the rest fine-tunes at the target.")
flags.DEFINE_integer("seed", 1, "Random seed.")
flags.DEFINE_integer("threads", 2, "TensorFlow intra/inter-op threads (0: TF default).",
                     lower_bound=0)
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")

MEAN, STD = 0.2860, 0.3530  # sqjl_tf's Fashion-MNIST normalisation
DEBIAN_DATA = "/usr/share/datasets/fashion-mnist"
LOGIT_TOLERANCE = 1e-3  # relative to the largest logit


def _find(stem):
    return find_idx([FLAGS.data_dir, DEBIAN_DATA], stem)


def load_split(prefix):
    """(images, labels) of ``train`` or ``t10k``, normalised as sqjl_tf does, first --limit."""
    images = read_idx(_find(f"{prefix}-images-idx3-ubyte"))[: FLAGS.limit]
    labels = read_idx(_find(f"{prefix}-labels-idx1-ubyte"))[: FLAGS.limit]
    x = (images.astype(np.float32) / np.float32(255.0) - np.float32(MEAN)) / np.float32(STD)
    return x[..., None], labels.astype(np.int32)


def build_resnet20(keras, num_classes=10, input_shape=(28, 28, 1)):
    """ResNet-20 in tf_keras, layer for layer as sqjl_tf's (names, shapes, order)."""

    def conv(x, filters, size, name, strides=1, padding=0):
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        return keras.layers.Conv2D(filters, size, strides=strides, padding="valid",
                                   use_bias=False, kernel_initializer="he_normal", name=name)(x)

    def bn(x, name):
        return keras.layers.BatchNormalization(axis=-1, momentum=0.9, epsilon=1e-5, name=name)(x)

    inputs = keras.Input(shape=input_shape, name="input")
    x = keras.layers.ReLU(name="relu1")(bn(conv(inputs, 16, 3, "conv1", padding=1), "bn1"))
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(3):
            name, strides = f"layer{stage}_block{block}", 2 if stage > 1 and block == 0 else 1
            shortcut = x
            y = bn(conv(x, filters, 3, f"{name}_conv1", strides, 1), f"{name}_bn1")
            y = keras.layers.ReLU(name=f"{name}_relu1")(y)
            y = bn(conv(y, filters, 3, f"{name}_conv2", 1, 1), f"{name}_bn2")
            if strides != 1 or x.shape[-1] != filters:
                shortcut = bn(conv(x, filters, 1, f"{name}_shortcut_conv", strides),
                              f"{name}_shortcut_bn")
            y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
            x = keras.layers.ReLU(name=f"{name}_out")(y)
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="resnet20")


def load_weights(model, path):
    """Sets every layer's weights from an npz keyed ``<layer>.<i>``; every key must be used."""
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        for layer in model.layers:
            if layer.weights:
                layer.set_weights([z[f"{layer.name}.{i}"] for i in range(len(layer.weights))])
                keys -= {f"{layer.name}.{i}" for i in range(len(layer.weights))}
    if keys:
        raise ValueError(f"{path} holds weights of no layer of the model: {sorted(keys)[:5]}")


def save_weights(model, path):
    """Writes every layer's weights to an npz keyed ``<layer>.<i>`` (atomically)."""
    arrays = {f"{layer.name}.{i}": w for layer in model.layers
              for i, w in enumerate(layer.get_weights())}
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)


def kernel_stats(model):
    """Per-layer nonzeros, distinct nonzero values and bits of the final kernels."""
    stats = {}
    for name in LAYERS:
        kernel = model.get_layer(name).kernel.numpy()
        nonzero = kernel[kernel != 0]
        distinct = int(np.unique(nonzero).size)
        stats[name] = {"size": int(kernel.size), "nnz": int(nonzero.size),
                       "density": float(nonzero.size / kernel.size), "distinct": distinct,
                       "bits": max(1, math.ceil(math.log2(distinct))) if distinct else 0}
    return stats


def check_transfer(model, x_test, y_test):
    """Compares the model's logits with --expect_logits; raises if they differ."""
    expected = np.load(FLAGS.expect_logits)
    if len(expected) > len(x_test):
        raise ValueError(f"{FLAGS.expect_logits} holds logits of {len(expected)} test images, "
                         f"more than the {len(x_test)} read")
    got = model.predict(x_test[: len(expected)], batch_size=500, verbose=0)
    diff = float(np.max(np.abs(got - expected)))
    labels = y_test[: len(expected)]
    check = {"images": int(len(expected)), "max_abs_logit_diff": diff,
             "accuracy_tf_keras": float(np.mean(got.argmax(-1) == labels)),
             "accuracy_keras3": float(np.mean(expected.argmax(-1) == labels))}
    logging.info("transfer check: %s", check)
    if diff > LOGIT_TOLERANCE * max(1.0, float(np.max(np.abs(expected)))):
        raise RuntimeError(f"The tf_keras ResNet-20 disagrees with the Keras 3 one: {check}")
    return check


class _Pipeline:
    """The TFMOT stages on one model, with the tf_keras/TFMOT modules imported lazily."""

    def __init__(self, data):
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras

        self.tf, self.tfmot, self.keras = tf, tfmot, keras
        (self.x_tr, self.y_tr), (self.x_te, self.y_te) = data

    def compile(self, model, lr):
        model.compile(optimizer=self.keras.optimizers.Adam(learning_rate=lr),
                      loss=self.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])

    def evaluate(self, model):
        self.compile(model, 1e-3)
        return float(model.evaluate(self.x_te, self.y_te, batch_size=500, verbose=0)[1])

    def fit(self, model, epochs, callbacks=()):
        start = time.time()
        if epochs:
            model.fit(self.x_tr, self.y_tr, batch_size=FLAGS.batch_size, epochs=epochs,
                      shuffle=True, callbacks=list(callbacks), verbose=FLAGS.verbose)
        return time.time() - start

    def prune(self, model, alloc):
        """Prunes to each layer's density; returns (stripped model, stage record)."""
        sparsity = self.tfmot.sparsity.keras
        steps = int(math.ceil(len(self.x_tr) / FLAGS.batch_size)) * FLAGS.epochs_prune
        end_step = max(1, int(round(FLAGS.prune_end_frac * steps)))
        frequency = min(100, max(1, end_step // 10))
        end_step = max(frequency, end_step // frequency * frequency)  # last prune at end_step

        def schedule(density):
            return sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=1.0 - density,
                                            begin_step=0, end_step=end_step, frequency=frequency)

        if FLAGS.variant == "uniform":  # TFMOT's default: the whole model, one schedule
            pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule(
                FLAGS.nnz_budget))
        else:
            def wrap(layer):
                density = alloc.get(layer.name, (1.0,))[0]
                if density >= 1.0:
                    return layer
                return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule(density))

            pruned = self.keras.models.clone_model(model, clone_function=wrap)
        self.compile(pruned, FLAGS.lr_prune)
        seconds = self.fit(pruned, FLAGS.epochs_prune, [sparsity.UpdatePruningStep()])
        stripped = sparsity.strip_pruning(pruned)
        record = {"epochs": FLAGS.epochs_prune, "optimizer": "adam", "lr": FLAGS.lr_prune,
                  "schedule": {"kind": "PolynomialDecay", "end_step": end_step,
                               "frequency": frequency, "total_steps": steps},
                  "seconds": seconds, "accuracy": self.evaluate(stripped),
                  "nnz": {n: s["nnz"] for n, s in kernel_stats(stripped).items()}}
        return stripped, record

    def cluster(self, model, alloc, notes):
        """Sparsity-preserving clustering; returns (stripped model, stage record)."""
        from tensorflow_model_optimization.python.core.clustering.keras import (
            cluster_config, clustering_centroids)
        # tfmot.clustering.keras.experimental.cluster_weights fails in 0.8.1; the module works.
        from tensorflow_model_optimization.python.core.clustering.keras.experimental import (
            cluster as experimental_cluster)

        init = cluster_config.CentroidInitialization
        clusters, used = {}, {}
        for name in LAYERS:
            kernel = model.get_layer(name).kernel.numpy()
            clusters[name] = 2 ** alloc[name][1]
            conv = isinstance(model.get_layer(name), self.keras.layers.Conv2D)
            if conv and kernel.size <= clusters[name]:  # TFMOT leaves such a conv as it is
                continue
            try:
                factory = clustering_centroids.CentroidsInitializerFactory
                centroids = factory.get_centroid_initializer(init.KMEANS_PLUS_PLUS)(
                    self.tf.constant(kernel), clusters[name],
                    preserve_sparsity=True).get_cluster_centroids()
                if not np.all(np.isfinite(centroids.numpy())):
                    raise ValueError("non-finite centroids")
                used[name] = init.KMEANS_PLUS_PLUS
            except Exception as err:  # noqa: BLE001 - TFMOT raises various errors here
                used[name] = init.LINEAR
                notes.append(f"{name}: k-means++ centroid init failed ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:160]}); LINEAR for this layer.")

        def wrap(layer):  # TFMOT leaves a conv with at most as many weights as clusters as is
            if layer.name not in used:
                return layer
            return experimental_cluster.cluster_weights(
                layer, number_of_clusters=clusters[layer.name],
                cluster_centroids_init=used[layer.name], preserve_sparsity=True)

        clustered = self.keras.models.clone_model(model, clone_function=wrap)
        wrapped = {layer.layer.name for layer in clustered.layers if hasattr(layer, "layer")}
        unwrapped = [name for name in LAYERS if name not in wrapped]
        for name in unwrapped:  # dense ones (the practitioner's conv1) train as they are
            layer = clustered.get_layer(name)
            if np.any(layer.kernel.numpy() == 0):  # nothing else would keep a sparse one sparse
                layer.trainable = False
                notes.append(f"{name}: too small to cluster and sparse: frozen while clustering.")
        self.compile(clustered, FLAGS.lr_cluster)
        seconds = self.fit(clustered, FLAGS.epochs_cluster)
        final = self.tfmot.clustering.keras.strip_clustering(clustered)
        record = {"epochs": FLAGS.epochs_cluster, "optimizer": "adam", "lr": FLAGS.lr_cluster,
                  "number_of_clusters": clusters, "left_unclustered": unwrapped,
                  "centroid_init": {n: i.name for n, i in used.items() if n not in unwrapped},
                  "preserve_sparsity": True, "seconds": seconds}
        return final, record


def main(argv):
    del argv
    start = time.time()
    try:
        alloc = allocation(FLAGS.variant, FLAGS.nnz_budget, FLAGS.bit_budget)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    if not os.path.isfile(FLAGS.weights):
        raise app.UsageError(f"Invalid value for flag `--weights`. Received: {FLAGS.weights!r}. "
                             "Expected an existing npz.")
    data = load_split("train"), load_split("t10k")
    pipeline = _Pipeline(data)
    tf, keras = pipeline.tf, pipeline.keras
    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    keras.utils.set_random_seed(FLAGS.seed)
    model = build_resnet20(keras)
    load_weights(model, FLAGS.weights)
    notes = []
    result = {
        "method": "tfmot-0.8.1: prune_low_magnitude(PolynomialDecay) + strip_pruning + "
                  "cluster_weights(preserve_sparsity) + strip_clustering",
        "variant": FLAGS.variant, "nnz_budget": FLAGS.nnz_budget,
        "bit_budget": FLAGS.bit_budget, "seed": FLAGS.seed, "batch_size": FLAGS.batch_size,
        "n_train": int(len(data[0][0])), "n_test": int(len(data[1][0])),
        "allocation": {n: {"density": d, "bits": b} for n, (d, b) in alloc.items()},
        "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
                     "python": sys.version.split()[0]},
        "stages": {}, "notes": notes,
    }
    if FLAGS.expect_logits:
        result["transfer_check"] = check_transfer(model, *data[1])
    result["dense_accuracy"] = pipeline.evaluate(model)
    logging.info("dense accuracy %.4f", result["dense_accuracy"])
    pruned, result["stages"]["prune"] = pipeline.prune(model, alloc)
    logging.info("pruned: accuracy %.4f", result["stages"]["prune"]["accuracy"])
    final, result["stages"]["cluster"] = pipeline.cluster(pruned, alloc, notes)
    stats = kernel_stats(final)
    lost = {n: result["stages"]["prune"]["nnz"][n] - stats[n]["nnz"] for n in LAYERS}
    if any(lost.values()):
        notes.append(f"clustering changed the nonzeros by {lost} (pruned - final).")
    total_bits = sum(s["bits"] * s["nnz"] for s in stats.values())
    weights_out = FLAGS.weights_out or os.path.splitext(FLAGS.out)[0] + ".npz"
    save_weights(final, weights_out)
    result.update({
        "accuracy": pipeline.evaluate(final), "layers": stats, "total_bits": int(total_bits),
        "budget_bits": budget_bits(FLAGS.nnz_budget, FLAGS.bit_budget),
        "rate": 32.0 * TOTAL_KERNEL / total_bits if total_bits else float("inf"),
        "weights_out": os.path.abspath(weights_out), "seconds": time.time() - start,
    })
    logging.info("final: accuracy %.4f, rate %.1fx", result["accuracy"], result["rate"])
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(FLAGS.out + ".tmp", FLAGS.out)


if __name__ == "__main__":
    app.run(main)
