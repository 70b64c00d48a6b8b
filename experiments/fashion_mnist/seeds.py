"""The same benchmark rows over several seeds: per-seed accuracy, mean and spread.

One benchmark call gives one seed of each row; a difference of a few tenths of a
point between two rows is within what another seed (another data order, another
ADMM allocation) moves. This script reads the work folders of benchmark calls
run with different ``--seed`` values (same ``--dense`` model, one ``--out_dir``
each) and writes a table with each row's accuracy per seed, its mean and
standard deviation, and the mean rate; then each sqjl_tf row against the peer
row at the same budget (``--against``, default TFMOT's hand-tuned variant): the
difference of the means in points and its standard error,
``sqrt(s1^2/n1 + s2^2/n2)`` (the runs of the two rows are independent).

Usage (three seeds of the ~533x gradual-pruning row and TFMOT's hand-tuned peer;
``<common>`` is the benchmark command of the row, e.g. from fashion_mnist_full.md):
    for s in 1 2 3; do python experiments/fashion_mnist/benchmark.py <common> \
        --seed=$s --dense=<dense model> --out_dir=<work>/s$s; done
    python experiments/fashion_mnist/seeds.py --work=<work>/s1,<work>/s2,<work>/s3 \
        --out=experiments/results/fashion_mnist_seeds.md
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import statistics
from typing import Dict, List, Tuple

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_list("work", None, "Benchmark --out_dir folders (or their fashion_mnist_runs), one per seed.")
flags.DEFINE_list("budgets", None, "nnz_budget:bit_budget pairs to show (default: every one found).")
flags.DEFINE_integer("min_seeds", 2, "Leave out rows run with fewer seeds than this.", lower_bound=1)
flags.DEFINE_string("out", None, "Markdown file to write (default: print only).")
flags.DEFINE_string("against", "TFMOT:hand", "method:variant each sqjl_tf row is compared with at "
                    "the same budget (difference of the means, its standard error); '': none.")

Key = Tuple[str, str, float, int]  # method, variant, nnz_budget, bit_budget
_TFMOT_RESULT = re.compile(r"tfmot_(.+)_([0-9.]+)_(\d+)\.json")  # tfmot_baseline.py --out


def _runs_folder(path: str) -> str:
    inner = os.path.join(path, "fashion_mnist_runs")
    return inner if os.path.isdir(inner) else path


def _tfmot_row(path: str) -> Dict:
    variant, nnz, bits = _TFMOT_RESULT.fullmatch(os.path.basename(path)).groups()
    with open(path) as f:
        result = json.load(f)
    return dict(method="TFMOT", variant=variant, nnz_budget=float(nnz), bit_budget=int(bits),
                accuracy=result["accuracy"], rate=result["rate"], seed=result.get("seed"))


def read_rows(folder: str) -> List[Dict]:
    """The finished rows of one benchmark work folder (sqjl_tf and TFMOT), each with its seed.

    Args:
        folder: a benchmark ``--out_dir`` or its ``fashion_mnist_runs`` folder.

    Returns:
        Dicts with method, variant, nnz_budget, bit_budget, accuracy, rate, seed.
    """
    runs = _runs_folder(folder)
    rows = []
    for path in sorted(glob.glob(os.path.join(runs, "sqjl_*.row.json"))):
        with open(path) as f:
            row = json.load(f)
        rows.append(dict(method=row["method"], variant=row["variant"],
                         nnz_budget=float(row["nnz_budget"]), bit_budget=int(row["bit_budget"]),
                         accuracy=row["accuracy"], rate=row["rate"],
                         seed=row.get("settings", {}).get("seed")))
    for path in sorted(glob.glob(os.path.join(runs, "tfmot_*_*_*.json"))):
        if _TFMOT_RESULT.fullmatch(os.path.basename(path)):
            rows.append(_tfmot_row(path))
    return rows


def summarize(rows: List[Dict]) -> Dict[Key, Dict]:
    """Groups rows by (method, variant, budget): accuracies by seed, mean, stdev, mean rate.

    Raises:
        ValueError: if one seed appears twice for the same row (two folders of one seed).
    """
    groups: Dict[Key, Dict] = {}
    for row in rows:
        key = (row["method"], row["variant"], row["nnz_budget"], row["bit_budget"])
        group = groups.setdefault(key, dict(by_seed={}, rates=[]))
        if row["seed"] in group["by_seed"]:
            raise ValueError(
                f"Invalid value for flag `--work`. Received two runs of seed {row['seed']} for "
                f"{key}. Expected one folder per seed.")
        group["by_seed"][row["seed"]] = row["accuracy"]
        group["rates"].append(row["rate"])
    for group in groups.values():
        values = list(group["by_seed"].values())
        group["mean"] = statistics.fmean(values)
        group["stdev"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        group["rate"] = statistics.fmean(group["rates"])
    return groups


def _shown(nnz: float, bits: int, budgets) -> bool:
    return not budgets or f"{nnz:g}:{bits}" in budgets


def table(groups: Dict[Key, Dict], budgets=None, min_seeds: int = 1) -> str:
    """A Markdown table of :func:`summarize`'s groups, largest nnz budget first, sqjl_tf first.

    Args:
        groups: the output of :func:`summarize`.
        budgets: "nnz:bits" strings to keep (None: every budget).
        min_seeds: leave out rows with fewer seeds than this.
    """
    groups = {k: g for k, g in groups.items() if len(g["by_seed"]) >= min_seeds}
    seeds = sorted({s for g in groups.values() for s in g["by_seed"]}, key=str)
    head = ("| method | variant | budget | " + " | ".join(f"seed {s}" for s in seeds)
            + " | mean | std | mean rate |")
    lines = [head, "| --- | --- | --- |" + " ---: |" * (len(seeds) + 3)]
    for (method, variant, nnz, bits), g in sorted(groups.items(), key=lambda kv: (-kv[0][2], kv[0][0] != "sqjl_tf", kv[0][1])):
        if not _shown(nnz, bits, budgets):
            continue
        cells = [f"{g['by_seed'][s]:.4f}" if s in g["by_seed"] else "" for s in seeds]
        lines.append(f"| {method} | {variant} | {nnz:g}, {bits} | " + " | ".join(cells)
                     + f" | {g['mean']:.4f} | {g['stdev']:.4f} | {g['rate']:.0f}x |")
    return "\n".join(lines) + "\n"


def differences(groups: Dict[Key, Dict], against: Tuple[str, str], budgets=None,
                min_seeds: int = 2) -> str:
    """A Markdown table: each sqjl_tf row's mean minus the ``against`` row's, same budget.

    Args:
        groups: the output of :func:`summarize`.
        against: (method, variant) of the peer row.
        budgets: "nnz:bits" strings to keep (None: every budget).
        min_seeds: leave out pairs where either row has fewer seeds (at least 2: the
            standard error needs a spread).

    Returns:
        The table (difference and standard error in accuracy points), or "" if no
        pair has the seeds.
    """
    lines = []
    for (method, variant, nnz, bits), g in sorted(groups.items(), key=lambda kv: -kv[0][2]):
        peer = groups.get((*against, nnz, bits))
        if method != "sqjl_tf" or peer is None or not _shown(nnz, bits, budgets):
            continue
        n1, n2 = len(g["by_seed"]), len(peer["by_seed"])
        if min(n1, n2) < max(min_seeds, 2):
            continue
        diff = 100 * (g["mean"] - peer["mean"])
        se = 100 * math.sqrt(g["stdev"] ** 2 / n1 + peer["stdev"] ** 2 / n2)
        lines.append(f"| {nnz:g}, {bits} | {variant} | {n1} / {n2} | {diff:+.2f} | {se:.2f} |")
    if not lines:
        return ""
    head = (f"| budget | sqjl_tf variant | seeds (sqjl_tf / {' '.join(against)}) | "
            f"difference of the means (points) | standard error |")
    return "\n".join([head, "| --- | --- | ---: | ---: | ---: |"] + lines) + "\n"


def main(argv):
    del argv
    if not FLAGS.work:
        raise app.UsageError("Invalid value for flag `--work`. Received: None. Expected one or "
                             "more benchmark work folders, one per seed.")
    missing = [w for w in FLAGS.work if not os.path.isdir(w)]
    if missing:
        raise app.UsageError(f"Invalid value for flag `--work`. Received: {FLAGS.work}. Expected "
                             f"existing folders (missing: {missing}).")
    rows = [row for folder in FLAGS.work for row in read_rows(folder)]
    try:
        groups = summarize(rows)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    text = table(groups, FLAGS.budgets, FLAGS.min_seeds)
    if FLAGS.against:
        against = tuple(FLAGS.against.split(":", 1))
        if len(against) != 2:
            raise app.UsageError(f"Invalid value for flag `--against`. Received: "
                                 f"{FLAGS.against!r}. Expected method:variant, e.g. TFMOT:hand.")
        compared = differences(groups, against, FLAGS.budgets, FLAGS.min_seeds)
        if compared:
            text += "\n" + compared
    logging.info("over %d folders:\n%s", len(FLAGS.work), text)
    if FLAGS.out:
        tmp = FLAGS.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, FLAGS.out)


if __name__ == "__main__":
    app.run(main)
