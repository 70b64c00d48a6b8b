"""Benchmark: size of the bit-packed compressed file against what the compression promises.

Compresses LeNet-5 at ~2000x (nnz 0.0054, 3 bits) and ~100x (nnz 0.08, 4 bits) with
the projections (from a trained dense model if given, else from He-initialised
weights), writes each with ``save_compressed``, checks the round trip bit for bit,
and prints the table of parts: the file less its header against
``codes + positions + codebooks + other weights`` (codes = sum b_l nnz_l bits,
positions = the smallest per-layer encoding), and the real rate of the whole file
against dense float32 (kernels and all other weights) beside the paper's rate.
It also round-trips ResNet-20 and MobileNet v1 (BatchNorm).

Usage:
    python experiments/bench_file_size.py [--dense=runs/lenet5_dense/model_dense.keras]
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import sqjl_tf  # noqa: E402
from sqjl_tf import projections  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dense", "runs/lenet5_dense/model_dense.keras", "Trained dense LeNet-5, if any.")


def _compress(model, nnz_budget, bit_budget):
    kernels = sqjl_tf.compressible_kernels(model)
    weights = [k.variable.numpy() for k in kernels]
    budget = sqjl_tf.budget_bits([w.size for w in weights], nnz_budget, bit_budget)
    sparse, nnz = projections.sparse_projection(weights, [int(bit_budget)] * len(weights), budget)
    quant, bits = projections.quantization_projection(sparse, nnz, budget)
    sparse, nnz = projections.sparse_projection(quant, bits, budget)
    for k, w in zip(kernels, sparse):
        k.variable.assign(w)
    return budget


def _round_trip(model, path):
    breakdown = sqjl_tf.save_compressed(model, path)
    loaded = sqjl_tf.load_compressed(path)
    same = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, loaded.weights))
    x = np.random.default_rng(0).standard_normal((4,) + model.input_shape[1:]).astype("float32")
    same_pred = np.array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    return breakdown, same and same_pred


def main(argv):
    del argv
    out = sys.stdout
    tmp = tempfile.mkdtemp()
    for label, nnz_budget, bit_budget in (("~2000x", 0.0054, 3), ("~100x", 0.08, 4)):
        if os.path.isfile(FLAGS.dense):
            model = keras.models.load_model(FLAGS.dense, compile=False)
            source = FLAGS.dense
        else:
            keras.utils.set_random_seed(0)
            model = sqjl_tf.build_model("caffelenet", 10)
            source = "He-initialised weights"
        budget = _compress(model, nnz_budget, bit_budget)
        report = sqjl_tf.compression_report(model, budget_bits=budget)
        breakdown, exact = _round_trip(model, os.path.join(tmp, f"lenet_{label}.sqjl"))
        payload = breakdown.total_bytes - breakdown.header_bytes
        codes = sum(r.bits * r.nnz for r in breakdown.layers) / 8
        formula = codes + breakdown.positions_bytes + breakdown.codebooks_bytes + breakdown.other_weights_bytes
        out.write(f"\n## LeNet-5 {label} (nnz {nnz_budget}, {bit_budget} bits; from {source})\n")
        out.write(f"budget {budget:.0f} bits, measured {report.size_bits} bits, paper rate "
                  f"{report.compression_rate:.1f}x, round trip bit-exact: {exact}\n")
        out.write(str(breakdown) + "\n")
        out.write(f"file less header: {payload:,} B; codes+positions+codebooks+other weights: "
                  f"{formula:,.0f} B; ratio {payload / formula:.3f}\n")
        out.write(f"real rate of the whole file vs dense float32: {breakdown.real_rate:.1f}x "
                  f"(paper rate {breakdown.paper_rate:.1f}x)\n")
    for arch in ("resnet20", "mobilenetv1"):
        keras.utils.set_random_seed(0)
        model = sqjl_tf.build_model(arch, 10)
        _compress(model, 0.05, 4)
        breakdown, exact = _round_trip(model, os.path.join(tmp, f"{arch}.sqjl"))
        out.write(f"\n{arch}: {breakdown.total_bytes:,} B, real rate {breakdown.real_rate:.1f}x, "
                  f"paper rate {breakdown.paper_rate:.1f}x, round trip bit-exact: {exact}\n")


if __name__ == "__main__":
    app.run(main)
