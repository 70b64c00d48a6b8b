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

import dataclasses
import os
import re
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # noqa: E402  (its flags too: --data_dir, --out_dir, --seed, ...)

FLAGS = flags.FLAGS
flags.DEFINE_string("budget", "0.04:3", "nnz_budget:bit_budget.")
flags.DEFINE_list("set", [], "Recipe settings to change, as name=value (e.g. finetune_kdtemp=4).")
flags.DEFINE_string("tag", None, "Names the run's folder and row (letters, digits, _ and -).")


def _recipe(pairs):
    """The ``Recipe`` with ``pairs`` changed; exits with a usage error on a bad pair."""
    from sqjl_tf import Recipe

    fields = {f.name: f.type for f in dataclasses.fields(Recipe)}
    changes = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields or not value:
            bench._usage_error(f"Invalid value for flag `--set`. Received: {pair!r}. Expected "
                               f"name=value with a name of {', '.join(fields)}.")
        try:
            kind = getattr(fields[name], "__name__", fields[name])  # "int", "float", "bool", "str"
            changes[name] = (value if kind == "str" else {"true": True, "false": False}[value.lower()]
                             if kind == "bool" else int(value) if kind == "int" else float(value))
        except (KeyError, ValueError):
            bench._usage_error(f"Invalid value for flag `--set`. Received: {pair!r}. Expected a "
                               f"value of type {kind} for {name}.")
    if not changes:
        bench._usage_error("Invalid value for flag `--set`. Received: ''. Expected one or more "
                           "name=value changes (the default recipe is the benchmark's own run).")
    try:
        return Recipe(**changes)
    except ValueError as err:
        bench._usage_error(f"Invalid value for flag `--set`: {err}")


def main(argv):
    if len(argv) > 1:
        bench._usage_error(f"Unexpected arguments: {' '.join(argv[1:])}.")
    nnz, bits = bench._one_budget(FLAGS.budget)
    if not (FLAGS.tag and re.fullmatch(bench.TAG, FLAGS.tag)):
        bench._usage_error(f"Invalid value for flag `--tag`. Received: {FLAGS.tag!r}. Expected "
                           "a name of letters, digits, _ and -.")
    recipe = _recipe(FLAGS.set)
    work = os.path.join(FLAGS.out_dir, f"{bench.NAME}_runs")
    if not os.path.isfile(os.path.join(work, "settings.json")):
        bench._usage_error(f"Invalid value for flag `--out_dir`. Received: {FLAGS.out_dir!r}. "
                           "Expected the --out_dir of a benchmark run (no work folder in it).")
    bench._claim(work)  # the same epochs, seed, data and dense model as the benchmark's runs
    try:
        bench._finished_sqjl_row(os.path.join(work, f"sqjl_{nnz}_{bits}_{FLAGS.tag}"), recipe)
    except app.UsageError as err:
        bench._usage_error(err)
    row = bench._sqjl(bench._pretrain(work)[0], nnz, bits, work, recipe=recipe,
                      tag=f"_{FLAGS.tag}")
    logging.info("%s: accuracy %.4f, rate %.1fx, within budget %s, empty layers %s",
                 row["variant"], row["accuracy"], row["rate"], row["within_budget"],
                 row["empty_layers"])


if __name__ == "__main__":
    app.run(main, flags_parser=bench._parse_flags)
