"""Benchmark: sqjl_tf's projections against a NumPy re-implementation of the reference.

Random weights shaped like LeNet-5 (430,500 kernel weights), ResNet-20 (CIFAR)
and AlexNet (~61M). For each case it prints the time, the total distortion and
the share of the budget used, for sqjl_tf and the reference side by side, and
the time of the TensorFlow and XLA kernels on this machine.

Usage:
    python experiments/bench_projections.py            # all cases
    python experiments/bench_projections.py --cases=lenet5 --repeats=5
"""

from __future__ import annotations

import functools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_numpy as reference  # noqa: E402
import tf_projections as _tf_projections  # noqa: E402

from sqjl_tf import _kmeans, projections  # noqa: E402
from sqjl_tf.budget import budget_bits  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["lenet5", "resnet20", "alexnet"], "Which weight sets to run.")
flags.DEFINE_integer("repeats", 5, "Timed repeats of sqjl_tf's projections (best kept).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("tf_kernels", True, "Also time the TensorFlow and XLA kernels.")

SHAPES = {
    "lenet5": [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)],
    "resnet20": [(3, 3, 3, 16)]
    + [(3, 3, 16, 16)] * 6
    + [(3, 3, 16, 32)] + [(3, 3, 32, 32)] * 5
    + [(3, 3, 32, 64)] + [(3, 3, 64, 64)] * 5
    + [(64, 10)],
    "alexnet": [
        (11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256),
        (3, 3, 256, 256), (9216, 4096), (4096, 4096), (4096, 1000),
    ],
}
# (nnz_budget, bit_budget) settings per case.
SETTINGS = {
    "lenet5": [(1.0, 4), (0.12, 6), (0.02, 3)],
    "resnet20": [(1.0, 4), (0.12, 6)],
    "alexnet": [(0.12, 6)],
}


def _weights(shapes, rng):
    # He-like scales per layer, so layers differ as in a real network.
    return [
        (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[:-1]))).astype(np.float32)
        for s in shapes
    ]


def _distortion(a, b):
    return sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b))


def _timed(fn, repeats=1):
    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _row(case, setting, op, impl, seconds, dist, used):
    return f"| {case} | {setting} | {op} | {impl} | {seconds:9.3f} | {dist:12.6g} | {used:7.4f} |"


def _bench_case(case, rng, rows, speedups, tf_jobs):
    shapes = SHAPES[case]
    weights = _weights(shapes, rng)
    sizes = [w.size for w in weights]
    slow_ref_ok = sum(sizes) < 2_000_000  # the O(n 2^b) k-means is hours on AlexNet
    for nnz_budget, bit_budget in SETTINGS[case]:
        setting = f"nnz {nnz_budget} / {bit_budget} b"
        budget = budget_bits(sizes, nnz_budget, bit_budget)
        bits0 = [int(bit_budget)] * len(weights)

        # Sparse projection (skipped at nnz 1.0: it keeps everything).
        if nnz_budget < 1.0:
            t_ours, (sparse, nnz) = _timed(
                lambda: projections.sparse_projection(weights, bits0, budget), FLAGS.repeats
            )
            t_ref, (sparse_ref, nnz_ref) = _timed(
                lambda: reference.sparse_projection(weights, bits0, budget)
            )
            for impl, t, out, n in (
                ("sqjl_tf", t_ours, sparse, nnz),
                ("reference", t_ref, sparse_ref, nnz_ref),
            ):
                used = sum(b * k for b, k in zip(bits0, n)) / budget
                rows.append(_row(case, setting, "sparse", impl, t, _distortion(weights, out), used))
            speedups.append((case, setting, "sparse", t_ref / t_ours))
            if FLAGS.tf_kernels and case != "alexnet":  # after the NumPy timings
                tf_jobs.append(functools.partial(_bench_tf_sparse, case, setting, weights, bits0, budget, rows))
        else:
            sparse, nnz = weights, sizes

        # Quantization projection on the sparse weights.
        t_ours, (quant, bits) = _timed(
            lambda: projections.quantization_projection(sparse, nnz, budget), FLAGS.repeats
        )
        ref_fn = reference.quantization_projection if slow_ref_ok else (
            reference.quantization_projection_fast
        )
        t_ref, (quant_ref, bits_ref) = _timed(lambda: ref_fn(sparse, nnz, budget))
        label = "reference" if slow_ref_ok else "reference*"
        for impl, t, out, b in (("sqjl_tf", t_ours, quant, bits), (label, t_ref, quant_ref, bits_ref)):
            used = sum(x * k for x, k in zip(b, nnz)) / budget
            rows.append(_row(case, setting, "quant", impl, t, _distortion(sparse, out), used))
        if slow_ref_ok:
            speedups.append((case, setting, "quant", t_ref / t_ours))
        logging.info("%s %s bits: sqjl_tf %s, reference %s", case, setting, bits, bits_ref)
        if FLAGS.tf_kernels and case == "lenet5":
            tf_jobs.append(functools.partial(_bench_tf_kmeans, case, setting, sparse, rows))


def _bench_tf_sparse(case, setting, weights, bits, budget, rows):
    import tensorflow as tf

    scores = tf.constant(np.concatenate([(w.ravel() ** 2) / b for w, b in zip(weights, bits)]))
    costs = tf.constant(np.concatenate([np.full(w.size, b, np.float32) for w, b in zip(weights, bits)]))
    kernels = [("tf", _tf_projections.sparse_keep), ("xla", _tf_projections.sparse_keep_xla)]
    if scores.shape[0] > 5_000_000:  # XLA's CPU sort of 61M keys takes minutes: not timed
        kernels = kernels[:1]
    for impl, fn in kernels:
        fn(scores, costs, budget)  # trace / compile
        t, mask = _timed(lambda: fn(scores, costs, budget).numpy(), FLAGS.repeats)
        flat = np.concatenate([w.ravel() for w in weights])
        kept_cost = float(np.sum(costs.numpy()[mask]))
        dist = float(np.sum(flat[~mask].astype(np.float64) ** 2))
        rows.append(_row(case, setting, "sparse", impl, t, dist, kept_cost / budget))


def _bench_tf_kmeans(case, setting, sparse, rows):
    """Times the k-means of every width for the largest layer: NumPy vs TF vs XLA."""
    import tensorflow as tf

    layer = max(sparse, key=lambda w: np.count_nonzero(w))
    sv = _kmeans.SortedValues.from_array(layer)
    widths = list(range(1, 9))
    t_np, res = _timed(lambda: _kmeans.kmeans_widths([sv], widths), FLAGS.repeats)
    rows.append(_row(case, setting, "kmeans(1 layer)", "numpy", t_np, sum(d for _, d in res[0]), 0))
    values = tf.constant(sv.values)
    inits = [tf.constant(np.linspace(sv.values[0], sv.values[-1], 2**b)) for b in widths]
    for impl, jit in (("tf", False), ("xla", True)):
        fn = _tf_projections.kmeans_fn(True, jit)
        for init in inits:
            fn(values, init)  # trace / compile per width
        t, out = _timed(lambda: [fn(values, init) for init in inits], FLAGS.repeats)
        rows.append(_row(case, setting, "kmeans(1 layer)", impl, t, sum(float(d) for _, d in out), 0))


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    rows = [
        "| case | setting | projection | implementation | seconds | distortion | budget used |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    speedups, tf_jobs = [], []
    for case in FLAGS.cases:
        if case not in SHAPES:
            raise app.UsageError(
                f"Invalid value for flag `--cases`. Received: {case!r}. Expected some of {sorted(SHAPES)}."
            )
        _bench_case(case, rng, rows, speedups, tf_jobs)
    for job in tf_jobs:
        job()
    sys.stdout.write("\n".join(rows) + "\n\n")
    sys.stdout.write("reference* = the reference algorithm's iterates computed with prefix sums "
                     "(its O(n 2^b) k-means would take hours at this size); not timed against.\n\n")
    for case, setting, op, ratio in speedups:
        sys.stdout.write(f"speed-up over the reference: {case} {setting} {op}: {ratio:.0f}x\n")


if __name__ == "__main__":
    app.run(main)
