"""TFMOT peer baseline on Fashion-MNIST LeNet-5: prune, then cluster.

Standalone script; it runs in its own process on legacy Keras 2 (`tf_keras`)
because TensorFlow Model Optimization 0.8.1 does not support Keras 3. It does
not import `sqjl_tf` (which would import Keras 3).

Pipeline (the TFMOT practitioner's recipe):

1. Dense Caffe LeNet-5 (conv1 20x5x5 -> pool -> conv2 50x5x5 -> pool ->
   fc1 500 relu -> fc2 10 logits; the convs have no activation, as in the
   Caffe reference), loaded from `--weights` (npz with w0..w7 in Keras layer
   order) or pretrained here for `--pretrain_epochs` epochs.
2. `prune_low_magnitude` with a `PolynomialDecay` schedule from 0 to the
   target sparsity, fine-tuning for `--epochs_prune` epochs, `strip_pruning`.
   Variant `uniform`: one sparsity `1 - nnz_budget` for the four kernels (the
   TFMOT default of one sparsity for every layer). Variant `hand`: the same
   total number of kernel nonzeros, but conv1, conv2 and fc2 kept 10x, 2x and
   4x denser than uniform and fc1 taking the rest. Variant `given`: the per-layer
   densities (and, optionally, bits) of `--densities` / `--layer_bits`, to train
   another method's allocation with this pipeline.
3. Sparsity-preserving `cluster_weights` with `2**bit_budget` clusters (one of
   them the zero centroid), k-means++ init with a per-layer fallback to
   LINEAR where k-means++ cannot be initialised, fine-tuning for
   `--epochs_cluster` epochs (Adam 1e-5 by default, as in TFMOT's tutorial),
   `strip_clustering`.
4. Honest measurement of the final kernels: per-layer nonzeros, distinct
   nonzero values, bits = ceil(log2(distinct)) (at least 1), compression rate
   32 * 430500 / sum(bits * nnz), and test accuracy.

Usage:

    TF_USE_LEGACY_KERAS=1 python experiments/fashion_mnist/tfmot_baseline.py \\
        --data_dir=/usr/share/datasets/fashion-mnist --weights=lenet.npz \\
        --nnz_budget=0.02 --bit_budget=3 --epochs_prune=10 --epochs_cluster=5 \\
        --variant=uniform --out=tfmot_uniform.json

(`TF_USE_LEGACY_KERAS=1` is set by the script itself before importing
TensorFlow.)
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from idx_numpy import find_idx, read_idx  # noqa: E402  (this script's folder)
from hand_allocation import (  # noqa: E402  (this script's folder)
    KERNEL_SIZES, LAYERS, TOTAL_KERNEL, target_densities)

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "npz of the pretrained dense LeNet-5 (w0..w7).")
flags.DEFINE_integer("pretrain_epochs", 0,
                     "If --weights is absent (or missing on disk), pretrain the dense model "
                     "for this many epochs first.")
flags.DEFINE_string("weights_out", None, "Where to save the pretrained dense weights (npz).")
flags.DEFINE_string("data_dir", "/usr/share/datasets/fashion-mnist",
                    "Directory with the Fashion-MNIST IDX files (.gz or plain).")
flags.DEFINE_float("nnz_budget", 0.02, "Kept fraction of the 430,500 kernel weights.")
flags.DEFINE_integer("bit_budget", 3, "Bits per weight: 2**bit_budget clusters (zero included).")
flags.DEFINE_integer("epochs_prune", 10, "Epochs of pruning fine-tuning.")
flags.DEFINE_integer("epochs_cluster", 5, "Epochs of clustering fine-tuning.")
flags.DEFINE_enum("variant", "uniform", ["uniform", "hand", "given"],
                  "Per-layer sparsity allocation; `given`: --densities and --layer_bits.")
flags.DEFINE_list("densities", None, "With --variant=given: name:density for each of conv1, conv2, "
                  "fc1, fc2 (e.g. an allocation sqjl_tf learned).")
flags.DEFINE_list("layer_bits", None, "With --variant=given: name:bits for each layer "
                  "(2**bits clusters, zero included); default --bit_budget for all.")
flags.DEFINE_integer("batch_size", 64, "Batch size of every stage.")
flags.DEFINE_integer("limit", 0, "If > 0, use only the first LIMIT train and test examples.")
flags.DEFINE_string("out", "tfmot_baseline.json", "JSON result file.")
flags.DEFINE_enum("optimizer_prune", "adam", ["adam", "sgd"], "Optimizer of the pruning stage.")
flags.DEFINE_float("lr_prune", 1e-3, "Learning rate of the pruning stage.")
flags.DEFINE_enum("optimizer_cluster", "adam", ["adam", "sgd"],
                  "Optimizer of the clustering stage (SGD empties clusters; see notes).")
flags.DEFINE_float("lr_cluster", 1e-5, "Learning rate of the clustering stage.")
flags.DEFINE_float("lr_pretrain", 1e-3, "Adam learning rate of the dense pretraining.")
flags.DEFINE_float("prune_end_frac", 0.8,
                   "PolynomialDecay reaches the target sparsity after this fraction of the "
                   "pruning steps; the rest fine-tunes at the target.")
flags.DEFINE_enum("cluster_init", "kmeans_plus_plus",
                  ["kmeans_plus_plus", "linear", "density_based", "random"],
                  "Preferred centroid init; falls back to LINEAR per layer if it fails.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("threads", 2, "TensorFlow intra/inter-op threads (0: TF default).")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")

MEAN, STD = 0.2860, 0.3530


def load_fashion_mnist(data_dir, limit=0):
    def images(stem):
        x = read_idx(find_idx([data_dir], stem)).astype(np.float32) / 255.0
        return ((x - MEAN) / STD)[..., None]

    def labels(stem):
        return read_idx(find_idx([data_dir], stem)).astype(np.int64)

    x_tr, y_tr = images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")
    x_te, y_te = images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte")
    if limit > 0:
        x_tr, y_tr, x_te, y_te = x_tr[:limit], y_tr[:limit], x_te[:limit], y_te[:limit]
    return (x_tr, y_tr), (x_te, y_te)


def kernel_stats(model, names=LAYERS):
    """Honest per-layer measurement of the kernels of `model`."""
    stats = {}
    for name in names:
        k = model.get_layer(name).kernel.numpy()
        nz = k[k != 0]
        distinct = int(np.unique(nz).size)
        stats[name] = {
            "size": int(k.size),
            "nnz": int(nz.size),
            "density": float(nz.size / k.size),
            "distinct_nonzero": distinct,
            "bits": max(1, int(math.ceil(math.log2(distinct)))) if distinct > 0 else 0,
        }
    return stats


def _per_layer(flag_name, items, cast, valid, expected):
    """Parses name:value items of a list flag into {layer: value} for every layer."""
    out = {}
    for item in items or ():
        name, _, value = item.partition(":")
        try:
            out[name] = cast(value)
        except ValueError:
            out[name] = None
        if name not in LAYERS or out[name] is None or not valid(out[name]):
            raise app.UsageError(f"Invalid value for flag `--{flag_name}`. Received: {item!r}. "
                                 f"Expected name:value with name in {LAYERS} and {expected}.")
    if set(out) != set(LAYERS):
        raise app.UsageError(f"Invalid value for flag `--{flag_name}`. Received: {items}. "
                             f"Expected one entry for each of {LAYERS}.")
    return out


def main(argv):
    del argv
    t_start = time.time()
    given_dens = given_bits = None
    if FLAGS.variant == "given":
        given_dens = _per_layer("densities", FLAGS.densities, float, lambda d: 0 < d <= 1,
                                "a density in (0, 1]")
        given_bits = (_per_layer("layer_bits", FLAGS.layer_bits, int, lambda b: 1 <= b <= 8,
                                 "bits in [1, 8]") if FLAGS.layer_bits
                      else {n: FLAGS.bit_budget for n in LAYERS})
    elif FLAGS.densities or FLAGS.layer_bits:
        raise app.UsageError("Invalid value for flag `--variant`. Received: "
                             f"{FLAGS.variant!r} with --densities/--layer_bits. Expected 'given'.")
    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.clustering.keras import (
        cluster_config, clustering_centroids)
    # `tfmot.clustering.keras.experimental.cluster_weights` raises AttributeError in
    # 0.8.1; the module path works.
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import (
        cluster as experimental_cluster)

    if FLAGS.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    keras.utils.set_random_seed(FLAGS.seed)

    notes = []
    result = {
        "method": "tfmot-0.8.1: prune_low_magnitude(PolynomialDecay) + strip_pruning + "
                  "cluster_weights(preserve_sparsity) + strip_clustering",
        "variant": FLAGS.variant,
        "nnz_budget": FLAGS.nnz_budget,
        "bit_budget": FLAGS.bit_budget,
        "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
                     "tfmot": getattr(tfmot, "__version__", "0.8.1"),
                     "python": sys.version.split()[0]},
        "seed": FLAGS.seed,
        "batch_size": FLAGS.batch_size,
        "stages": {},
        "notes": notes,
    }

    (x_tr, y_tr), (x_te, y_te) = load_fashion_mnist(FLAGS.data_dir, FLAGS.limit)
    result["n_train"], result["n_test"] = int(len(x_tr)), int(len(x_te))
    steps_per_epoch = int(math.ceil(len(x_tr) / FLAGS.batch_size))

    def build_lenet():
        return keras.Sequential([
            keras.layers.InputLayer(input_shape=(28, 28, 1)),
            keras.layers.Conv2D(20, 5, padding="valid", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(50, 5, padding="valid", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(500, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="fc2"),
        ], name="lenet5")

    def make_opt(kind, lr):
        if kind == "adam":
            return keras.optimizers.Adam(learning_rate=lr)
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)

    def compile_(m, kind, lr):
        m.compile(optimizer=make_opt(kind, lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])

    def evaluate(m):
        compile_(m, "adam", 1e-3)
        return float(m.evaluate(x_te, y_te, batch_size=1000, verbose=0)[1])

    def fit(m, epochs, callbacks=()):
        t0 = time.time()
        if epochs > 0:
            m.fit(x_tr, y_tr, batch_size=FLAGS.batch_size, epochs=epochs, shuffle=True,
                  callbacks=list(callbacks), verbose=FLAGS.verbose)
        dt = time.time() - t0
        return dt, (dt / epochs if epochs > 0 else None)

    # ---- 1. dense model ---------------------------------------------------------
    model = build_lenet()
    sizes = {n: int(model.get_layer(n).kernel.shape.num_elements()) for n in LAYERS}
    assert sizes == KERNEL_SIZES, sizes
    if FLAGS.weights and os.path.exists(FLAGS.weights):
        with np.load(FLAGS.weights) as z:
            model.set_weights([z[f"w{i}"] for i in range(8)])
        result["stages"]["pretrain"] = {"weights": os.path.abspath(FLAGS.weights), "epochs": 0}
    elif FLAGS.pretrain_epochs > 0:
        compile_(model, "adam", FLAGS.lr_pretrain)
        dt, per = fit(model, FLAGS.pretrain_epochs)
        result["stages"]["pretrain"] = {"epochs": FLAGS.pretrain_epochs, "optimizer": "adam",
                                        "lr": FLAGS.lr_pretrain, "seconds": dt,
                                        "seconds_per_epoch": per}
        out_w = FLAGS.weights_out or FLAGS.weights
        if out_w:
            os.makedirs(os.path.dirname(os.path.abspath(out_w)), exist_ok=True)
            np.savez(out_w, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
            result["stages"]["pretrain"]["weights_out"] = os.path.abspath(out_w)
    else:
        raise app.UsageError("Give --weights (existing npz) or --pretrain_epochs > 0.")
    result["dense_accuracy"] = evaluate(model)
    print(f"dense accuracy {result['dense_accuracy']:.4f}", flush=True)

    # ---- 2. pruning -------------------------------------------------------------
    dens = given_dens or target_densities(FLAGS.variant, FLAGS.nnz_budget)
    total_steps = steps_per_epoch * FLAGS.epochs_prune
    end_step = max(1, int(round(FLAGS.prune_end_frac * total_steps)))
    frequency = min(100, max(1, end_step // 10))
    end_step = max(frequency, (end_step // frequency) * frequency)  # last prune at end_step
    schedules = {n: tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=1.0 - dens[n], begin_step=0,
        end_step=end_step, frequency=frequency) for n in LAYERS}

    def apply_pruning(layer):
        if layer.name in schedules:
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer, pruning_schedule=schedules[layer.name])
        return layer

    if FLAGS.variant == "uniform":
        # The TFMOT default: wrap the whole model with one schedule.
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedules["conv1"])
    else:
        pruned = keras.models.clone_model(model, clone_function=apply_pruning)
    compile_(pruned, FLAGS.optimizer_prune, FLAGS.lr_prune)
    dt, per = fit(pruned, FLAGS.epochs_prune,
                  [tfmot.sparsity.keras.UpdatePruningStep()])
    if FLAGS.epochs_prune == 0:
        notes.append("epochs_prune=0: pruning masks never updated (no pruning happened).")
    pruned = tfmot.sparsity.keras.strip_pruning(pruned)
    pstats = kernel_stats(pruned)
    result["stages"]["prune"] = {
        "epochs": FLAGS.epochs_prune, "optimizer": FLAGS.optimizer_prune, "lr": FLAGS.lr_prune,
        "schedule": {"kind": "PolynomialDecay", "power": 3, "begin_step": 0,
                     "end_step": end_step, "frequency": frequency,
                     "total_steps": total_steps},
        "target_density": dens,
        "seconds": dt, "seconds_per_epoch": per,
        "accuracy": evaluate(pruned),
        "nnz": {n: pstats[n]["nnz"] for n in LAYERS},
    }
    print(f"pruned accuracy {result['stages']['prune']['accuracy']:.4f} "
          f"nnz {result['stages']['prune']['nnz']}", flush=True)

    # ---- 3. clustering ----------------------------------------------------------
    n_clusters = {n: 2 ** (given_bits[n] if given_bits else FLAGS.bit_budget) for n in LAYERS}
    CI = cluster_config.CentroidInitialization
    preferred = {"kmeans_plus_plus": CI.KMEANS_PLUS_PLUS, "linear": CI.LINEAR,
                 "density_based": CI.DENSITY_BASED, "random": CI.RANDOM}[FLAGS.cluster_init]
    init_used = {}
    for n in LAYERS:
        kernel = tf.constant(pruned.get_layer(n).kernel.numpy())
        try:
            init_cls = clustering_centroids.CentroidsInitializerFactory.get_centroid_initializer(
                preferred)
            c = init_cls(kernel, n_clusters[n], preserve_sparsity=True).get_cluster_centroids()
            if not np.all(np.isfinite(c.numpy())):
                raise ValueError("non-finite centroids")
            init_used[n] = preferred.name
        except Exception as e:  # noqa: BLE001 - TFMOT raises various errors here
            init_used[n] = CI.LINEAR.name
            pos, neg = int((kernel.numpy() > 0).sum()), int((kernel.numpy() < 0).sum())
            notes.append(f"{n}: {preferred.name} centroid init failed "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160]}; "
                         f"{pos} positive / {neg} negative nonzeros for {n_clusters[n]} clusters); "
                         "fell back to LINEAR for this layer via clone_model.")

    def apply_clustering(layer):
        if layer.name in init_used:
            return experimental_cluster.cluster_weights(
                layer, number_of_clusters=n_clusters[layer.name],
                cluster_centroids_init=CI[init_used[layer.name]], preserve_sparsity=True)
        return layer

    clustered = keras.models.clone_model(pruned, clone_function=apply_clustering)
    compile_(clustered, FLAGS.optimizer_cluster, FLAGS.lr_cluster)
    acc_cluster_init = float(clustered.evaluate(x_te, y_te, batch_size=1000, verbose=0)[1])
    dt, per = fit(clustered, FLAGS.epochs_cluster)
    final = tfmot.clustering.keras.strip_clustering(clustered)
    fstats = kernel_stats(final)
    result["stages"]["cluster"] = {
        "epochs": FLAGS.epochs_cluster, "optimizer": FLAGS.optimizer_cluster,
        "lr": FLAGS.lr_cluster, "number_of_clusters": n_clusters,
        "preserve_sparsity": True, "centroid_init": init_used,
        "accuracy_before_finetune": acc_cluster_init,
        "seconds": dt, "seconds_per_epoch": per,
    }
    lost = {n: pstats[n]["nnz"] - fstats[n]["nnz"] for n in LAYERS}
    if any(v != 0 for v in lost.values()):
        notes.append(f"clustering changed the per-layer nonzeros by {lost} (pruned - final).")

    # ---- 4. honest measurement ----------------------------------------------------
    total_bits = sum(s["bits"] * s["nnz"] for s in fstats.values())
    for n in LAYERS:
        fstats[n]["target_density"] = dens[n]
    result.update({
        "accuracy": evaluate(final),
        "rate": (32.0 * TOTAL_KERNEL / total_bits) if total_bits > 0 else float("inf"),
        "total_nnz": int(sum(s["nnz"] for s in fstats.values())),
        "total_bits": int(total_bits),
        "total_kernel_params": TOTAL_KERNEL,
        "layers": fstats,
        "epochs": {"pretrain": result["stages"]["pretrain"]["epochs"],
                   "prune": FLAGS.epochs_prune, "cluster": FLAGS.epochs_cluster,
                   "total_compression": FLAGS.epochs_prune + FLAGS.epochs_cluster},
        "seconds": time.time() - t_start,
        "measurement": "kernels only (biases excluded, 32-bit); bits per layer = "
                       "ceil(log2(distinct nonzero values)), min 1; positions not charged; "
                       "rate = 32*430500/sum(bits*nnz).",
    })
    print(json.dumps({k: result[k] for k in ("variant", "accuracy", "rate", "total_nnz")}),
          flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
