"""``sqjl_tf.compress`` with other ``sqjl_tf.Recipe`` settings, from the benchmark's dense model.

The benchmark runs ``compress`` with its own recipe (tuned on LeNet-5). This script runs
it again at one budget with some settings changed (``--set=name=value,...``, any field
of ``Recipe``) and the same epochs, seed and dense model, reading and writing the
benchmark's work folder: the run goes to ``sqjl_<nnz>_<bits>_<tag>`` and its measured
row to ``sqjl_<nnz>_<bits>_<tag>.row.json`` there (resumed like the benchmark's own);
the benchmark's table is not changed.

    python experiments/fashion_mnist_resnet20/recipe_variant.py --budget=0.04:3 \\
        --set=admm_share=0.2,prune_share=0.4,quant_share=0.2 --tag=a4
"""

import os
import re
import sys

from absl import app, flags, logging

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import benchmark as bench  # noqa: E402  (its flags too: --data_dir, --out_dir, --seed, ...)
import cli  # noqa: E402
import recipe_settings  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("budget", "0.04:3", "nnz_budget:bit_budget.")
flags.DEFINE_list("set", [], "Recipe settings to change, as name=value (e.g. finetune_kdtemp=4).")
flags.DEFINE_string("tag", None, "Names the run's folder and row (letters, digits, _ and -).")


def _recipe(pairs):
    """The ``Recipe`` with ``pairs`` changed; exits with a usage error on a bad pair."""
    try:
        return recipe_settings.parse(pairs)
    except ValueError as err:
        cli.usage_error(f"Invalid value for flag `--set`. {err}")


def main(argv):
    if len(argv) > 1:
        cli.usage_error(f"Unexpected arguments: {' '.join(argv[1:])}.")
    nnz, bits = bench.one_budget(FLAGS.budget)
    if not (FLAGS.tag and re.fullmatch(bench.TAG, FLAGS.tag)):
        cli.usage_error(f"Invalid value for flag `--tag`. Received: {FLAGS.tag!r}. Expected "
                        "a name of letters, digits, _ and -.")
    recipe = _recipe(FLAGS.set)
    work = os.path.join(FLAGS.out_dir, f"{cli.NAME}_runs")
    if not os.path.isfile(os.path.join(work, "settings.json")):
        cli.usage_error(f"Invalid value for flag `--out_dir`. Received: {FLAGS.out_dir!r}. "
                        "Expected the --out_dir of a benchmark run (no work folder in it).")
    bench.claim(work)  # the same epochs, seed, data and dense model as the benchmark's runs
    try:
        bench.finished_sqjl_row(os.path.join(work, f"sqjl_{nnz}_{bits}_{FLAGS.tag}"), recipe)
    except app.UsageError as err:
        cli.usage_error(err)
    row = bench.run_sqjl(bench.pretrain(work)[0], nnz, bits, work, recipe=recipe,
                         tag=f"_{FLAGS.tag}")
    logging.info("%s: accuracy %.4f, rate %.1fx, within budget %s, empty layers %s",
                 row["variant"], row["accuracy"], row["rate"], row["within_budget"],
                 row["empty_layers"])


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
