"""Another epoch split of ``sqjl_tf.compress``'s fine-tuning, from a finished run's ADMM stage.

The benchmark's ``compress`` call splits its epochs as the LeNet-5 benchmark found best
(at 20 epochs: ADMM 9, full precision 9 of which 5 prune, quantized 2). This script asks
whether another split of the same total does better on ResNet-20 without re-running the
ADMM stage: it starts from the ADMM stage's weights and allocation saved in a finished
``sqjl_<nnz>_<bits>`` folder of the benchmark's work folder, runs ``compress``'s fine-tuning
stages (Adam, cosine from the recipe's ``finetune_lr``) with ``--float_epochs`` and
``--quant_epochs`` (from the ADMM stage's weights, or with ``--start=dense`` from the
dense model's; with ``--finetune_lr`` at another peak learning rate), and measures the
result as the benchmark does. The row goes to ``<workdir>_f<float>p<prune>q<quant>.row.json``
beside it (with the other flags' tags); the benchmark's table is not changed.

    python experiments/fashion_mnist_resnet20/split_variant.py --budget=0.04:3 \\
        --float_epochs=7 --quant_epochs=4
"""

import json
import math
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # noqa: E402  (its flags too: --data_dir, --batch_size, --seed, ...)

FLAGS = flags.FLAGS
flags.DEFINE_string("budget", "0.04:3", "nnz_budget:bit_budget of the finished run to start from.")
flags.DEFINE_integer("float_epochs", 7, "Full-precision epochs (the support shrinks in the first "
                     "--prune_epochs).", lower_bound=1)
flags.DEFINE_integer("prune_epochs", 5, "Epochs over which the support shrinks.", lower_bound=1)
flags.DEFINE_integer("quant_epochs", 4, "Quantized epochs.", lower_bound=1)
flags.DEFINE_enum("allocation", "admm", ["admm", "uniform"], "The bits and nonzeros fine-tuned "
                  "to: the ADMM stage's (as compress), or every kernel at --budget's density and "
                  "bits (TFMOT uniform's allocation; a diagnostic: same start, same schedule).")
flags.DEFINE_float("finetune_lr", None, "Peak Adam learning rate of the fine-tuning, > 0 "
                   "(default: Recipe's finetune_lr, as compress).")
flags.DEFINE_enum("start", "admm", ["admm", "dense"], "The weights fine-tuned from: the ADMM "
                  "stage's (as compress), or the dense model's (a diagnostic: the ADMM stage's "
                  "allocation reached by a gradual magnitude prune from the dense weights, as "
                  "TFMOT prunes).")


def main(argv):
    if len(argv) > 1:
        bench._usage_error(f"Unexpected arguments: {' '.join(argv[1:])}.")
    if FLAGS.finetune_lr is not None and not 0 < FLAGS.finetune_lr < math.inf:
        bench._usage_error(f"Invalid value for flag `--finetune_lr`. Received: "
                           f"{FLAGS.finetune_lr}. Expected a finite number > 0.")
    import keras

    import sqjl_tf
    from sqjl_tf.pipeline import Recipe, _finetune_stages

    nnz_budget, bit_budget = bench._one_budget(FLAGS.budget)
    work = os.path.join(FLAGS.out_dir, f"{bench.NAME}_runs")
    workdir = os.path.join(work, f"sqjl_{nnz_budget}_{bit_budget}")
    stem = os.path.join(workdir, "stage_admm")
    if not os.path.isfile(stem + ".json"):
        bench._usage_error(f"Invalid value for flag `--budget`. Received: {FLAGS.budget!r}. "
                           f"Expected a budget whose compress() run finished its ADMM stage "
                           f"({stem}.json is missing; run the benchmark first).")
    if FLAGS.prune_epochs > FLAGS.float_epochs:
        bench._usage_error(f"Invalid value for flag `--prune_epochs`. Received: "
                           f"{FLAGS.prune_epochs}. Expected at most --float_epochs "
                           f"({FLAGS.float_epochs}).")
    recipe = Recipe() if FLAGS.finetune_lr is None else Recipe(finetune_lr=FLAGS.finetune_lr)
    tag = "" if FLAGS.allocation == "admm" else f"_{FLAGS.allocation}"
    tag += "" if FLAGS.start == "admm" else f"_from_{FLAGS.start}"
    tag += "" if FLAGS.finetune_lr is None else f"_lr{FLAGS.finetune_lr:g}"
    out = (f"{workdir}_f{FLAGS.float_epochs}p{FLAGS.prune_epochs}q{FLAGS.quant_epochs}"
           f"{tag}.row.json")
    with open(stem + ".json") as f:
        admm = json.load(f)
    model = bench._load_dense(bench._pretrain(work)[0])  # the finished dense run's model
    if FLAGS.start == "admm":
        model.load_weights(stem + ".weights.h5")
    keras.utils.set_random_seed(FLAGS.seed)
    train, test = bench._data("train", FLAGS.batch_size), bench._data("test", 500)
    steps = len(train)
    bits, nnz = admm["bits"], admm["nnz"]
    if FLAGS.allocation == "uniform":
        sizes = [k.size for k in sqjl_tf.compressible_kernels(model)]
        bits, nnz = [bit_budget] * len(sizes), [int(nnz_budget * n) for n in sizes]
    split = {"float": FLAGS.float_epochs, "prune": FLAGS.prune_epochs,
             "quant": FLAGS.quant_epochs}
    epochs = FLAGS.float_epochs + FLAGS.quant_epochs
    start = time.time()
    compressed, _ = _finetune_stages(model, bits, nnz, split, recipe, bench._loss(),
                                     ["accuracy"], train, test, steps, verbose=2)
    admm_epochs = len(admm["history"]["loss"])
    reused = "reused" if FLAGS.start == "admm" else "its allocation reused"
    row = {"method": "sqjl_tf", "variant": f"ADMM {admm_epochs} ({reused}) + float "
           f"{FLAGS.float_epochs} (prune {FLAGS.prune_epochs}) + quantized {FLAGS.quant_epochs}, "
           f"{FLAGS.allocation} allocation, from the {FLAGS.start} weights, peak lr "
           f"{recipe.finetune_lr:g}",
           **bench._measure(bench._layer_weights(compressed), nnz_budget, bit_budget),
           "epochs": admm_epochs + epochs, "finetune_seconds": time.time() - start}
    bench._save_row(out, row)
    logging.info("%s: accuracy %.4f, rate %.1fx, within budget %s -> %s", row["variant"],
                 row["accuracy"], row["rate"], row["within_budget"], out)


if __name__ == "__main__":
    app.run(main, flags_parser=bench._parse_flags)
