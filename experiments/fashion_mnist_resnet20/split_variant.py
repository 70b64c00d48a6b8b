"""Another epoch split of ``sqjl_tf.compress``'s fine-tuning, from a finished run's ADMM stage.

The benchmark's ``compress`` call splits its epochs as the LeNet-5 benchmark found best
(at 20 epochs: ADMM 9, full precision 9 of which 5 prune, quantized 2). This script asks
whether another split of the same total does better on ResNet-20 without re-running the
ADMM stage: it starts from the ADMM stage's weights and allocation saved in a finished
``sqjl_<nnz>_<bits>`` folder of the benchmark's work folder (or, with ``--from_tag``, in a
recipe_variant.py run's ``sqjl_<nnz>_<bits>_<tag>``), runs ``compress``'s fine-tuning
stages (Adam, cosine from the recipe's ``finetune_lr``) with ``--float_epochs`` and
``--quant_epochs`` (from the ADMM stage's weights, or with ``--start=dense`` from the
dense model's; with ``--finetune_lr`` at another peak learning rate, with
``--finetune_weight_decay`` a decoupled weight decay on the weights
``--finetune_decay_scope`` names, with ``--schedule=tfmot``
on TFMOT's learning rates; with ``--allocation`` to a TFMOT variant's allocation; with
``--train_centres`` the codebooks trained by gradient as TFMOT clusters), and
measures the result as the benchmark does. The row goes to
``<workdir>_f<float>p<prune>q<quant>.row.json`` beside it (with the other flags' tags); the
benchmark's table is not changed.

    python experiments/fashion_mnist_resnet20/split_variant.py --budget=0.04:3 \\
        --float_epochs=7 --quant_epochs=4
"""

import json
import math
import os
import re
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # noqa: E402  (its flags too: --data_dir, --batch_size, --seed, ...)
import cli  # noqa: E402
import allocation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("budget", "0.04:3", "nnz_budget:bit_budget of the finished run to start from.")
flags.DEFINE_string("from_tag", None, "Start from recipe_variant.py's run of this --tag "
                    "(sqjl_<nnz>_<bits>_<tag>) instead of the benchmark's own "
                    "(sqjl_<nnz>_<bits>).")
flags.DEFINE_integer("float_epochs", 7, "Full-precision epochs (the support shrinks in the first "
                     "--prune_epochs).", lower_bound=1)
flags.DEFINE_integer("prune_epochs", 5, "Epochs over which the support shrinks.", lower_bound=1)
flags.DEFINE_integer("quant_epochs", 4, "Quantized epochs.", lower_bound=1)
flags.DEFINE_enum("allocation", "admm", ["admm", *allocation.VARIANTS], "The bits and nonzeros "
                  "fine-tuned to: the ADMM stage's (as compress), or a TFMOT variant's (uniform: "
                  "every kernel at --budget's density and bits; practitioner: the first conv and "
                  "the classifier dense at 8 bits, the rest sharing what is left). The TFMOT "
                  "ones are diagnostics: same start, same schedule, another allocation.")
flags.DEFINE_float("finetune_lr", None, "Peak Adam learning rate of the fine-tuning, > 0 "
                   "(default: Recipe's finetune_lr, as compress).")
flags.DEFINE_float("finetune_weight_decay", None, "Decoupled weight decay of the fine-tuning's "
                   "Adam, >= 0 (default: Recipe's finetune_weight_decay, as compress).")
flags.DEFINE_enum("finetune_decay_scope", None, ["all", "normalized"], "Which weights that decay "
                  "shrinks (default: Recipe's finetune_decay_scope, as compress).")
flags.DEFINE_enum("start", "admm", ["admm", "dense"], "The weights fine-tuned from: the ADMM "
                  "stage's (as compress), or the dense model's (a diagnostic: the ADMM stage's "
                  "allocation reached by a gradual magnitude prune from the dense weights, as "
                  "TFMOT prunes).")
flags.DEFINE_enum("schedule", "cosine", ["cosine", "tfmot"], "The fine-tuning's learning "
                  "rate: a cosine from the peak to 0 over all its epochs (as compress), or "
                  "TFMOT's (a diagnostic): the peak held through the full-precision epochs, "
                  "then 1e-5 (its clustering rate) through the quantized ones.")
flags.DEFINE_bool("train_centres", False, "Train the codebooks' centres by gradient in the "
                  "quantized epochs (Recipe.finetune_train_centres, TFMOT's clustering) instead "
                  "of Lloyd refreshes.")


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"Unexpected arguments: {' '.join(argv[1:])}.")
    if FLAGS.finetune_lr is not None and not 0 < FLAGS.finetune_lr < math.inf:
        cli.usage_error(f"Invalid value for flag `--finetune_lr`. Received: "
                        f"{FLAGS.finetune_lr}. Expected a finite number > 0.")
    if FLAGS.finetune_weight_decay is not None and not 0 <= FLAGS.finetune_weight_decay < math.inf:
        cli.usage_error(f"Invalid value for flag `--finetune_weight_decay`. Received: "
                        f"{FLAGS.finetune_weight_decay}. Expected a finite number >= 0.")
    if FLAGS.from_tag is not None and not re.fullmatch(bench.TAG, FLAGS.from_tag):
        cli.usage_error(f"Invalid value for flag `--from_tag`. Received: {FLAGS.from_tag!r}. "
                        f"Expected letters, digits, _ and - (a recipe_variant.py --tag).")
    import keras
    import numpy as np

    import sqjl_tf
    from sqjl_tf.pipeline import Recipe, _finetune_stages

    nnz_budget, bit_budget = bench.one_budget(FLAGS.budget)
    work = os.path.join(FLAGS.out_dir, f"{cli.NAME}_runs")
    from_tag = "" if FLAGS.from_tag is None else f"_{FLAGS.from_tag}"
    workdir = os.path.join(work, f"sqjl_{nnz_budget}_{bit_budget}{from_tag}")
    stem = os.path.join(workdir, "stage_admm")
    if not os.path.isfile(stem + ".json"):
        name, value = ("--from_tag", FLAGS.from_tag) if from_tag else ("--budget", FLAGS.budget)
        cli.usage_error(f"Invalid value for flag `{name}`. Received: {value!r}. Expected "
                        f"a run whose compress() finished its ADMM stage ({stem}.json is "
                        f"missing; run the benchmark or recipe_variant.py first).")
    if FLAGS.prune_epochs > FLAGS.float_epochs:
        cli.usage_error(f"Invalid value for flag `--prune_epochs`. Received: "
                        f"{FLAGS.prune_epochs}. Expected at most --float_epochs "
                        f"({FLAGS.float_epochs}).")
    overrides = {name: getattr(FLAGS, name) for name in ("finetune_lr", "finetune_weight_decay",
                                                         "finetune_decay_scope")
                 if getattr(FLAGS, name) is not None}
    recipe = Recipe(finetune_train_centres=FLAGS.train_centres, **overrides)
    tag = "" if FLAGS.allocation == "admm" else f"_{FLAGS.allocation}"
    tag += "" if FLAGS.start == "admm" else f"_from_{FLAGS.start}"
    tag += "" if FLAGS.finetune_lr is None else f"_lr{FLAGS.finetune_lr:g}"
    tag += "" if FLAGS.finetune_weight_decay is None else f"_wd{FLAGS.finetune_weight_decay:g}"
    tag += "" if FLAGS.finetune_decay_scope is None else f"_{FLAGS.finetune_decay_scope}"
    tag += "" if FLAGS.schedule == "cosine" else f"_{FLAGS.schedule}_lr"
    tag += "_trained_centres" if FLAGS.train_centres else ""
    settings = os.path.join(work, "settings.json")  # the seed the work folder's runs used
    if os.path.isfile(settings):
        with open(settings) as f:
            tag += "" if json.load(f).get("seed") == FLAGS.seed else f"_seed{FLAGS.seed}"
    out = (f"{workdir}_f{FLAGS.float_epochs}p{FLAGS.prune_epochs}q{FLAGS.quant_epochs}"
           f"{tag}.row.json")
    with open(stem + ".json") as f:
        admm = json.load(f)
    model = bench.load_dense(bench.pretrain(work)[0])  # the finished dense run's model
    if FLAGS.start == "admm":
        model.load_weights(stem + ".weights.h5")
    keras.utils.set_random_seed(FLAGS.seed)
    train, test = bench.split_data("train", FLAGS.batch_size), bench.split_data("test", 500)
    steps = len(train)
    bits, nnz = admm["bits"], admm["nnz"]
    kernels = sqjl_tf.compressible_kernels(model)
    sizes = [k.size for k in kernels]
    if FLAGS.allocation == "uniform":  # as the runs measured before the practitioner's
        bits, nnz = [bit_budget] * len(sizes), [int(nnz_budget * n) for n in sizes]
    elif FLAGS.allocation != "admm":
        plan = allocation.allocation(FLAGS.allocation, nnz_budget, bit_budget)
        assert sizes == list(allocation.KERNEL_SIZES.values()), sizes
        bits = [plan[name][1] for name in allocation.LAYERS]
        # At most the start's nonzeros: the ADMM stage leaves a few weights at exactly 0.
        nnz = [min(int(np.count_nonzero(k.variable.numpy())), max(1, round(plan[name][0] * n)))
               for k, (name, n) in zip(kernels, allocation.KERNEL_SIZES.items())]
    split = {"float": FLAGS.float_epochs, "prune": FLAGS.prune_epochs,
             "quant": FLAGS.quant_epochs}
    epochs = FLAGS.float_epochs + FLAGS.quant_epochs
    start = time.time()
    schedule = None  # compress's cosine
    if FLAGS.schedule == "tfmot":
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            [FLAGS.float_epochs * steps], [recipe.finetune_lr, allocation.CLUSTER_LR])
    compressed, _ = _finetune_stages(model, bits, nnz, split, recipe, bench.loss_fn(),
                                     ["accuracy"], train, test, steps, verbose=2,
                                     learning_rate=schedule)
    admm_epochs = len(admm["history"]["loss"])
    if FLAGS.start == "admm":
        admm_part = f"ADMM {admm_epochs} (reused) + "
    elif FLAGS.allocation == "admm":
        admm_part = f"ADMM {admm_epochs} (its allocation reused) + "
    else:  # neither the ADMM stage's weights nor its allocation: its epochs are not counted
        admm_part, admm_epochs = "no ADMM: ", 0
    row = {"method": "sqjl_tf", "variant": f"{admm_part}float "
           f"{FLAGS.float_epochs} (prune {FLAGS.prune_epochs}) + quantized {FLAGS.quant_epochs}, "
           f"{FLAGS.allocation} allocation, from the {FLAGS.start} weights, peak lr "
           f"{recipe.finetune_lr:g}"
           + (f", weight decay {recipe.finetune_weight_decay:g} on "
              f"{'every weight' if recipe.finetune_decay_scope == 'all' else 'normalized kernels'}"
              if recipe.finetune_weight_decay else "")
           + ("" if FLAGS.schedule == "cosine" else f", {FLAGS.schedule} schedule")
           + (", centres trained by gradient" if FLAGS.train_centres else ""),
           **bench.measure(bench.layer_weights(compressed), nnz_budget, bit_budget),
           "epochs": admm_epochs + epochs, "finetune_seconds": time.time() - start}
    bench.save_row(out, row)
    logging.info("%s: accuracy %.4f, rate %.1fx, within budget %s -> %s", row["variant"],
                 row["accuracy"], row["rate"], row["within_budget"], out)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
